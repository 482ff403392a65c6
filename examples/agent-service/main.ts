/**
 * The agent service, for `deno serve` (and Deno Deploy): opens the store
 * once per isolate from environment variables, then serves
 * {@linkcode agentService}. Every isolate opens the same store, so
 * `deno serve --parallel` (one isolate per CPU, or `DENO_JOBS`) and Deploy's
 * isolates share the conversations.
 *
 * ```sh
 * XP_KV_PATH=agents.db deno task serve                    # KV file, one isolate per CPU
 * XP_BACKEND=redis XP_REDIS_URL=redis://127.0.0.1:6379 deno task serve
 * ```
 *
 * The backend is `kv` unless `XP_BACKEND` says otherwise. Without
 * `XP_KV_PATH`, `Deno.openKv()` opens Deno's default KV: on Deno Deploy the
 * app's KV; locally a file chosen by the main module, the same for every
 * isolate of this server but not for other programs (pass `XP_KV_PATH` to
 * share the store with them).
 *
 * @module
 */

// Owns the service's start: its environment, its one backend per isolate; never routes a request.

import {
  configFromEnv,
  createSharedBackend,
} from "@xml-pipeline/shared-backend";
import { agentService, SERVICE_VARIABLES } from "./app.ts";

// Only the service's own variables: --allow-env can name exactly these.
const env = Object.fromEntries(
  SERVICE_VARIABLES.map((name) => [name, Deno.env.get(name)]),
);
const backend = await createSharedBackend({
  backendType: "kv",
  ...configFromEnv(env),
});

export default {
  fetch: agentService(backend),
} satisfies Deno.ServeDefaultExport;
