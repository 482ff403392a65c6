// The inspector's failures: a message printed as is, and the exit code it ends
// with. It never prints and never exits: main() does both.

/** The exit a failure ends with, by its name in `EXIT_CODES`. */
export type ExitKind = "notFound" | "usage" | "unreachable";

/** A failure the inspector reports with a chosen exit code. */
export class CliError extends Error {
  /** Which exit code `main()` returns for it. */
  readonly exit: ExitKind;

  constructor(exit: ExitKind, message: string) {
    super(message);
    this.name = "CliError";
    this.exit = exit;
  }
}

/** A mistake on the command line: exit 2, with a pointer to the help. */
export function usageError(message: string): CliError {
  return new CliError(
    "usage",
    `${message}\nRun 'cli --help' (or 'cli <command> --help') for usage.`,
  );
}
