export {
  startKernel,
  openKernelDatabase,
  type Kernel,
  type KernelOverrides,
  type KernelStage,
} from "./start-kernel.js";
export { loadKernelOptions } from "./load-kernel-options.js";
export { resolveKernelOptions, DEFAULT_KERNEL_OPTIONS, type KernelOptions } from "./kernel-options.js";
export { KERNEL_VERSION } from "./version.js";
