// A TCP proxy in front of a redis-server that can lose replies on purpose:
// `dropReplies()` keeps forwarding commands to the server but discards what
// the server sends back; `cut()` then closes every connection open at that
// moment (the client sees its connection drop after the server applied the
// command) and forwards normally again. `stall()` makes the connections open
// now silent for good (a half-open connection: no reply, no close) while new
// ones work. Used by tests/redis_test.ts to lose the reply of a script the
// server did run, deterministically.

/** A proxy on a free `127.0.0.1` port; set `target` before clients connect. */
export class ReplyLosingProxy implements AsyncDisposable {
  readonly port: number;
  /** The server's port. */
  target = 0;
  readonly #listener: Deno.TcpListener;
  readonly #pairs = new Set<[Deno.TcpConn, Deno.TcpConn]>();
  readonly #stalled = new Set<[Deno.TcpConn, Deno.TcpConn]>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #accepting: Promise<void>;
  #dropping = false;

  constructor() {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#accepting = this.#accept();
  }

  /** From now on, replies of the server are discarded. */
  dropReplies(): void {
    this.#dropping = true;
  }

  /** The connections open now get no reply any more (new ones do). */
  stall(): void {
    for (const pair of this.#pairs) this.#stalled.add(pair);
  }

  /** Closes every open connection, then forwards replies again. */
  cut(): void {
    for (const pair of this.#pairs) this.#closePair(pair);
    this.#dropping = false;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    this.cut();
    await Promise.all(this.#tasks);
  }

  async #accept(): Promise<void> {
    try {
      for await (const client of this.#listener) {
        let server: Deno.TcpConn;
        try {
          server = await Deno.connect({
            hostname: "127.0.0.1",
            port: this.target,
          });
        } catch {
          client.close();
          continue;
        }
        const pair: [Deno.TcpConn, Deno.TcpConn] = [client, server];
        this.#pairs.add(pair);
        const task = Promise.all([
          this.#pump(pair, client, server, false),
          this.#pump(pair, server, client, true),
        ]).then(() => {});
        this.#tasks.add(task);
        task.then(() => this.#tasks.delete(task));
      }
    } catch {
      // the listener was closed
    }
  }

  async #pump(
    pair: [Deno.TcpConn, Deno.TcpConn],
    from: Deno.TcpConn,
    to: Deno.TcpConn,
    replies: boolean,
  ): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        if (replies && (this.#dropping || this.#stalled.has(pair))) continue;
        let written = 0;
        while (written < n) {
          written += await to.write(buffer.subarray(written, n));
        }
      }
    } catch {
      // closed by cut() or by the other side
    }
    this.#closePair(pair);
  }

  #closePair(pair: [Deno.TcpConn, Deno.TcpConn]): void {
    this.#stalled.delete(pair);
    if (!this.#pairs.delete(pair)) return;
    for (const conn of pair) {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
  }
}
