// A Worker of the ContextBuffer / ThreadRegistry concurrency tests (started by
// runInWorkers in context_harness.ts). Protocol:
//   main -> { type: "start", config, task }: open a backend from config;
//   worker -> { type: "ready" };
//   main -> { type: "go" }: run the task (every Worker is released at once);
//   worker -> { type: "done", result } after closing the backend,
//             or { type: "error", error } on any failure.

/// <reference lib="deno.worker" />

import type { BackendConfig } from "../../config.ts";
import { createSharedBackend } from "../../factory.ts";
import type { SharedBackend } from "../../protocol.ts";
import { runTask, type WorkerTask } from "./context_tasks.ts";

let backend: SharedBackend | undefined;
let task: WorkerTask | undefined;

function fail(error: unknown): void {
  const text = error instanceof Error
    ? `${error.name}: ${error.message}\n${error.stack ?? ""}`
    : String(error);
  self.postMessage({ type: "error", error: text });
}

self.onmessage = async (
  event: MessageEvent<
    { type: "start"; config: BackendConfig; task: WorkerTask } | {
      type: "go";
    }
  >,
) => {
  try {
    if (event.data.type === "start") {
      task = event.data.task;
      backend = await createSharedBackend(event.data.config);
      self.postMessage({ type: "ready" });
      return;
    }
    if (backend === undefined || task === undefined) {
      throw new Error("go before start");
    }
    let result;
    try {
      result = await runTask(backend, task);
    } finally {
      await backend.close();
    }
    self.postMessage({ type: "done", result });
  } catch (error) {
    fail(error);
  }
};
