// The concurrent tasks of the ContextBuffer and ThreadRegistry tests, as plain
// functions over a backend: tests/_fixtures/context_worker.ts runs them in
// Workers (kv, redis); the memory variants run them in the test's isolate.
// An "answer" task is an agent that waits for its questions and answers them.

import { ContextBuffer } from "../../context.ts";
import type { SharedBackend } from "../../protocol.ts";
import { ThreadRegistry } from "../../registry.ts";

/** Races `getOrCreate`, `extendChain` and `initializeRoot` on the same chains as every other writer. */
export interface RegistryTask {
  kind: "registry";
  /** The organism whose root every writer initializes. */
  organism: string;
  /** Chains every writer gets or creates, in its own order. */
  chains: string[];
  /** The chain every writer extends, by each of `hops`. */
  base: string;
  hops: string[];
  /** Shuffles this writer's order of calls. */
  seed: number;
}

/** What a writer of a {@linkcode RegistryTask} got. */
export interface RegistryTaskResult {
  root: string;
  /** [chain, uuid] per chain of the task, in the task's order. */
  chains: [string, string][];
  /** [hop, uuid] per hop of the task, in the task's order. */
  extended: [string, string][];
}

/** Appends `count` notes to one thread through a `ContextBuffer`, all at once. */
export interface AppendTask {
  kind: "append";
  threadId: string;
  writer: number;
  count: number;
}

/** What a writer of an {@linkcode AppendTask} got: the slotIndex of each seq. */
export interface AppendTaskResult {
  writer: number;
  /** [seq, slotIndex] per append. */
  indexes: [number, number][];
}

/** The payload of an {@linkcode AppendTask}. */
export interface Note {
  type: "Note";
  writer: number;
  seq: number;
}

/**
 * An agent that waits (`ContextBuffer.waitFor`) for each question addressed
 * to it on one thread and appends its answer: the other half of a
 * conversation the test plays from another isolate.
 */
export interface AnswerTask {
  kind: "answer";
  threadId: string;
  /** The agent's name: it answers the questions whose `toId` is this. */
  name: string;
  /** Questions to answer, `seq` 0 .. questions - 1. */
  questions: number;
}

/** What an {@linkcode AnswerTask} agent did. */
export interface AnswerTaskResult {
  name: string;
  /** [seq, the question's slotIndex, the answer's slotIndex] per question. */
  answered: [number, number, number][];
}

/** The payload of the questions and answers of an {@linkcode AnswerTask}. */
export interface Exchange {
  type: "question" | "answer";
  seq: number;
}

/** Any task. */
export type WorkerTask = RegistryTask | AppendTask | AnswerTask;
/** Any task's result. */
export type WorkerTaskResult =
  | RegistryTaskResult
  | AppendTaskResult
  | AnswerTaskResult;

/** Runs a task on a backend. */
export function runTask(
  backend: SharedBackend,
  task: WorkerTask,
): Promise<WorkerTaskResult> {
  switch (task.kind) {
    case "registry":
      return runRegistryTask(backend, task);
    case "append":
      return runAppendTask(backend, task);
    case "answer":
      return runAnswerTask(backend, task);
  }
}

async function runAnswerTask(
  backend: SharedBackend,
  task: AnswerTask,
): Promise<AnswerTaskResult> {
  const buffer = new ContextBuffer<Exchange>(backend);
  const answered: [number, number, number][] = [];
  let fromIndex = 0;
  for (let seq = 0; seq < task.questions; seq++) {
    const question = await buffer.waitFor(
      task.threadId,
      (slot) =>
        slot.toId === task.name && slot.payload.type === "question" &&
        slot.payload.seq === seq,
      { fromIndex, timeoutMs: 60_000 },
    );
    const answer = await buffer.append(
      task.threadId,
      { type: "answer", seq },
      { fromId: task.name, toId: question.fromId },
    );
    answered.push([seq, question.slotIndex, answer.slotIndex]);
    fromIndex = question.slotIndex + 1;
  }
  return { name: task.name, answered };
}

async function runRegistryTask(
  backend: SharedBackend,
  task: RegistryTask,
): Promise<RegistryTaskResult> {
  const registry = new ThreadRegistry(backend);
  const random = mulberry32(task.seed);
  const chainCalls = shuffle(
    task.chains.map((chain, i) => ({ chain, i })),
    random,
  );
  const hopCalls = shuffle(task.hops.map((hop, i) => ({ hop, i })), random);
  const chains: [string, string][] = new Array(task.chains.length);
  const extended: [string, string][] = new Array(task.hops.length);
  const [root] = await Promise.all([
    registry.initializeRoot(task.organism),
    ...chainCalls.map(async ({ chain, i }) => {
      chains[i] = [chain, await registry.getOrCreate(chain)];
    }),
    ...hopCalls.map(async ({ hop, i }) => {
      // The base itself is created by whichever writer gets there first.
      const base = await registry.getOrCreate(task.base);
      extended[i] = [hop, await registry.extendChain(base, hop)];
    }),
  ]);
  return { root: root as string, chains, extended };
}

async function runAppendTask(
  backend: SharedBackend,
  task: AppendTask,
): Promise<AppendTaskResult> {
  const buffer = new ContextBuffer<Note>(backend);
  const slots = await Promise.all(
    Array.from(
      { length: task.count },
      (_, seq) =>
        buffer.append(
          task.threadId,
          { type: "Note", writer: task.writer, seq },
          { fromId: `writer-${task.writer}`, toId: "sink" },
        ),
    ),
  );
  return {
    writer: task.writer,
    indexes: slots.map((slot) => [slot.payload.seq, slot.slotIndex]),
  };
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}
