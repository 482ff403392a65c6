/**
 * The project's whole test run (`deno task test`): static checks, then the
 * tests and doc examples, then one line `N passed, M failed` counted from the
 * real results (each static check counts as one; every test and test step
 * counts as one).
 *
 * @module
 */

const deno = Deno.execPath();
const env = { ...Deno.env.toObject(), NO_COLOR: "1" };
// The published entry points (deno.json "exports", which include "." = mod.ts).
const entryPoints = [
  ...Object.values(
    (JSON.parse(await Deno.readTextFile("deno.json")) as {
      exports: Record<string, string>;
    }).exports,
  ),
];

const checks: [string, string[]][] = [
  ["format", ["fmt", "--check"]],
  ["lint", ["lint"]],
  ["type check", ["check", "."]],
  // Each entry point alone: JSR documents each on its own page, so every type
  // its signatures name must be reachable from it (together they hide gaps).
  ...entryPoints.map((entry): [string, string[]] => [
    `doc lint ${entry}`,
    ["doc", "--lint", entry],
  ]),
  ["publish dry run", ["publish", "--dry-run", "--allow-dirty"]],
];

// No step may hang CI: a step past its limit is killed and counted as failed.
const CHECK_LIMIT_MS = 5 * 60_000;
const TEST_LIMIT_MS = 15 * 60_000;

let passed = 0;
let failed = 0;

for (const [name, args] of checks) {
  console.log(`\n=== ${name}: deno ${args.join(" ")}`);
  const signal = AbortSignal.timeout(CHECK_LIMIT_MS);
  const { code } = await new Deno.Command(deno, { args, env, signal }).spawn()
    .status;
  if (signal.aborted) {
    console.log(`=== ${name} killed after ${CHECK_LIMIT_MS / 60_000} minutes`);
  }
  if (code === 0) {
    passed++;
  } else {
    failed++;
    console.log(`=== ${name} FAILED (exit code ${code})`);
  }
}

// The tests and the doc examples of every module and of README.md.
const testArgs = ["test", "-A", "--doc", ".", "README.md", ...Deno.args];
console.log(`\n=== tests: deno ${testArgs.join(" ")}`);
const testSignal = AbortSignal.timeout(TEST_LIMIT_MS);
const child = new Deno.Command(deno, {
  args: testArgs,
  env,
  stdout: "piped",
  signal: testSignal,
}).spawn();
let tail = "";
const decoder = new TextDecoder();
for await (const chunk of child.stdout) {
  await Deno.stdout.write(chunk);
  tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4096);
}
const { code } = await child.status;
if (testSignal.aborted) {
  console.log(`=== tests killed after ${TEST_LIMIT_MS / 60_000} minutes`);
}

// deno test ends with e.g. "ok | 5 passed (13 steps) | 0 failed" or
// "FAILED | 4 passed (12 steps) | 1 failed (2 steps) | 3 ignored (1 step)".
const summary = tail.match(/^(ok|FAILED) \| .*$/m)?.[0];
if (summary === undefined) {
  failed++;
  console.log(`=== tests ended without a summary (exit code ${code})`);
} else {
  const count = (label: string) => {
    const m = summary.match(
      new RegExp(`(\\d+) ${label}(?: \\((\\d+) steps?\\))?`),
    );
    return m === null ? 0 : Number(m[1]) + Number(m[2] ?? 0);
  };
  passed += count("passed");
  failed += count("failed");
  if (code !== 0 && count("failed") === 0) failed++;
}

console.log(`\n${passed} passed, ${failed} failed`);
Deno.exit(failed === 0 ? 0 : 1);
