// One Worker of demo/main.ts: opens its own backend on the shared store and
// plays its agents (demo/_agents.ts). Protocol:
//   main -> { type: "start", config, job }: open a backend from config;
//   worker -> { type: "ready" };
//   main -> { type: "go" }: play (every Worker is released at once);
//   worker -> { type: "progress", appended } about every 100 ms;
//   worker -> { type: "done", report } after closing its backend,
//             or { type: "error", error } on any failure.

/// <reference lib="deno.worker" />

import { type BackendConfig, createSharedBackend } from "../mod.ts";
import { type AgentJob, playAgents } from "./_agents.ts";

type Command =
  | { type: "start"; config: BackendConfig; job: AgentJob }
  | { type: "go" };

let opened:
  | { backend: Awaited<ReturnType<typeof createSharedBackend>>; job: AgentJob }
  | undefined;

self.onmessage = async (event: MessageEvent<Command>) => {
  try {
    const command = event.data;
    if (command.type === "start") {
      opened = {
        backend: await createSharedBackend(command.config),
        job: command.job,
      };
      self.postMessage({ type: "ready" });
      return;
    }
    if (opened === undefined) throw new Error("go before start");
    const { backend, job } = opened;
    let appended = 0;
    let posted = 0;
    const timer = setInterval(() => {
      if (appended !== posted) {
        self.postMessage({ type: "progress", appended: appended - posted });
        posted = appended;
      }
    }, 100);
    let report;
    try {
      report = await playAgents(backend, job, () => appended++);
    } finally {
      clearInterval(timer);
      await backend.close();
    }
    if (appended !== posted) {
      self.postMessage({ type: "progress", appended: appended - posted });
    }
    self.postMessage({ type: "done", report });
  } catch (error) {
    self.postMessage({
      type: "error",
      error: error instanceof Error
        ? `${error.name}: ${error.message}`
        : String(error),
    });
  }
};
