/**
 * What a client remembers for recovery (docs/PROTOCOL.md §11): the history's
 * epoch and the last offset seen on each stream (`@all`, `@user`, each
 * channel). It decides which messages are duplicates, and what a reconnect
 * and a resubscribe ask for. No sockets, no timers: the client feeds it.
 */

/** The two streams every connection has; the others are channels. */
export const ALL = "@all";
export const USER = "@user";

const isOffset = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

export class StreamOffsets {
  #epoch: string | null = null;
  #last = new Map<string, number>();

  /** The epoch of the remembered offsets, or `null` before the first `connected` that had one. */
  get epoch(): string | null {
    return this.#epoch;
  }

  /** The last offset seen on `stream`, or `undefined`. */
  get(stream: string): number | undefined {
    return this.#last.get(stream);
  }

  /** Every remembered offset, by stream. */
  snapshot(): Record<string, number> {
    return Object.fromEntries(this.#last);
  }

  /**
   * Whether a message on `stream` at `offset` is new: `true` (and the offset
   * is remembered) unless it is at or below the last one seen there. A
   * message without a stream or a numeric offset (the server's own answers,
   * presence events) is always new.
   */
  accept(stream: unknown, offset: unknown): boolean {
    if (typeof stream !== "string" || !isOffset(offset)) return true;
    const last = this.#last.get(stream);
    if (last !== undefined && offset <= last) return false;
    this.#last.set(stream, offset);
    return true;
  }

  /**
   * The server's `connected`. `recovered`: the missed messages follow, so
   * the offsets stay where they are (the replay moves them on). Otherwise
   * the connection starts after `offsets`: they replace `@all` and `@user`,
   * and a new epoch forgets the channels' offsets too (they belong to the
   * old one).
   */
  connected(epoch: unknown, offsets: unknown, recovered: boolean): void {
    if (recovered) return;
    if (typeof epoch === "string" && epoch !== this.#epoch) {
      this.#epoch = epoch;
      this.#last.clear();
    }
    const o = (offsets && typeof offsets === "object" ? offsets : {}) as Record<string, unknown>;
    for (const stream of [ALL, USER]) {
      const v = o[stream];
      if (isOffset(v)) this.#last.set(stream, v);
      else this.#last.delete(stream);
    }
  }

  /**
   * The server's `subscribed` for `channel`: unless `recovered`, the
   * channel's messages start after `offset`.
   */
  subscribed(channel: string, offset: unknown, recovered: boolean): void {
    if (recovered) return;
    if (isOffset(offset)) this.#last.set(channel, offset);
    else this.#last.delete(channel);
  }

  /** Forgets `stream` (an unsubscribed channel: a later subscribe starts afresh). */
  forget(stream: string): void {
    this.#last.delete(stream);
  }

  /** Forgets every channel not in `keep` (a new connection has only the channels it subscribes to). */
  retainChannels(keep: { has(channel: string): boolean }): void {
    for (const stream of [...this.#last.keys()]) {
      if (stream !== ALL && stream !== USER && !keep.has(stream)) this.#last.delete(stream);
    }
  }

  /** The query of a reconnect that asks to recover, or `null` before any epoch is known. */
  recoveryQuery(): { epoch: string; since_all: number; since_user: number } | null {
    if (this.#epoch === null) return null;
    return { epoch: this.#epoch, since_all: this.#last.get(ALL) ?? 0, since_user: this.#last.get(USER) ?? 0 };
  }

  /** What a resubscribe to `channel` asks for, or `null` when nothing of it is remembered. */
  since(channel: string): { since: number; epoch: string } | null {
    const since = this.#last.get(channel);
    if (this.#epoch === null || since === undefined) return null;
    return { since, epoch: this.#epoch };
  }
}
