// Opens a RedisBackend on the rediss:// URL given as the argument, appends,
// reads back, pings and closes; prints "ok" or throws. Run by
// tests/redis_test.ts in a subprocess with DENO_CERT set to the test CA.

import assert from "node:assert/strict";
import { RedisBackend } from "../../backends/redis.ts";

const backend = await RedisBackend.open({
  redisUrl: Deno.args[0]!,
  prefix: "tls:",
});
assert.equal(await backend.bufferAppend("t", new Uint8Array([1, 2, 3])), 0);
assert.deepEqual(await backend.bufferGetThread("t"), [
  new Uint8Array([1, 2, 3]),
]);
assert.equal(await backend.ping(), true);
await backend.bufferClear();
await backend.close();
console.log("ok");
