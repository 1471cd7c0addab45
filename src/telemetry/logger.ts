import { pino, type Logger, type LoggerOptions, type DestinationStream } from "pino";

export type { Logger };

/** Options for the kernel's root logger. */
export interface LoggerConfig {
  /** pino level. @default "info" */
  level: string;
  /** Extra paths to redact, in pino path syntax, added to DEFAULT_REDACT_PATHS. @default [] */
  redactPaths: string[];
}

/** Paths that never reach a log line: credentials in headers and anything named like a secret. */
export const DEFAULT_REDACT_PATHS = [
  "headers.authorization",
  'headers["x-api-key"]',
  'headers["x-enis-override"]',
  'headers["x-nops-signature"]',
  "*.password",
  "*.secret",
  "*.apiKey",
  "*.api_key",
  "*.token",
  "*.privateKey",
];

/** Creates the root pino logger; components take `logger.child({ component })`. */
export function createLogger(config: LoggerConfig, destination?: DestinationStream): Logger {
  const options: LoggerOptions = {
    level: config.level,
    base: { service: "nops-kernel" },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: [...DEFAULT_REDACT_PATHS, ...config.redactPaths], censor: "[redacted]" },
    formatters: { level: (label) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}

/** A logger that drops everything (tests that do not assert on logs). */
export function createSilentLogger(): Logger {
  return pino({ level: "silent" });
}
