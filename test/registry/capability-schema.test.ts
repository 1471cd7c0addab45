import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { startTestKernel } from "../helpers/kernel.js";

const register = (inputSchema: string, outputSchema = "") => ({
  tenant: "acme",
  name: "a",
  version: "1",
  endpoint: "127.0.0.1:9",
  capabilities: [{ name: "ok" }, { name: "lookup", inputSchema, outputSchema }],
});

test("registry - capability JSON Schemas are validated at registration and kept", async (t) => {
  const k = await startTestKernel(t);
  const registry = k.client(AgentRegistryService, "in-process");
  const cases: [string, string, RegExp][] = [
    ["{", "", /capabilities\[1\]\.input_schema: is not JSON/],
    ['{"type":"string"}', "", /capabilities\[1\]\.input_schema: must have "type": "object"/],
    ['{"type":"object","properties":{"a":{"type":"strnig"}}}', "", /input_schema: is not a valid JSON Schema/],
    ['{"type":"object","requird":["a"]}', "", /input_schema: is not a valid JSON Schema.*requird/],
    ['{"type":"object"}', "[]", /capabilities\[1\]\.output_schema: must be a JSON Schema object/],
  ];
  for (const [input, output, message] of cases) {
    const err = ConnectError.from(await t.throwsAsync(registry.registerAgent(register(input, output))));
    t.is(err.code, Code.InvalidArgument, input);
    t.regex(err.rawMessage, message);
  }
  const schema = '{"type":"object","properties":{"id":{"type":"string","format":"uuid"}},"required":["id"]}';
  const { agent } = await registry.registerAgent(register(schema, '{"type":"object"}'));
  const got = await registry.getAgent({ tenant: "acme", id: agent!.id });
  t.is(got.agent?.capabilities[1]?.inputSchema, schema);
  t.is(got.agent?.capabilities[1]?.outputSchema, '{"type":"object"}');
  t.is(got.agent?.capabilities[0]?.inputSchema, "");
});
