// Appends one ContextBuffer message to a KV store from its own process, for the
// web inspector's tests: `deno run -A inspector_append.ts <kvPath> <prefix>
// <threadId> <payload as JSON>`; prints the slot's index (the only writer).

import { ContextBuffer, createSharedBackend } from "../../mod.ts";

const [kvPath, prefix, threadId, payload] = Deno.args;
if (payload === undefined) {
  console.error(
    "usage: inspector_append.ts <kvPath> <prefix> <threadId> <json>",
  );
  Deno.exit(2);
}
await using backend = await createSharedBackend({
  backendType: "kv",
  kvPath: kvPath!,
  prefix: prefix!,
});
await new ContextBuffer(backend).append(threadId!, JSON.parse(payload), {
  fromId: "intruder",
  toId: "inspector",
});
console.log(await backend.bufferThreadLen(threadId!) - 1);
