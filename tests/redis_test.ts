import { RedisBackend } from "../backends/redis.ts";
import { runConformanceSuite } from "../testing/conformance.ts";
import { startRedisServer } from "./_redis_server.ts";

Deno.test("RedisBackend meets the shared-backend contract", async (t) => {
  await using server = await startRedisServer();
  await runConformanceSuite(t, {
    name: "redis",
    open: (config) => RedisBackend.open({ ...config, redisUrl: server.url }),
  });
});
