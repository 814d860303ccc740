/**
 * The listener registry of a client: callbacks by event type, `"*"` for
 * every event, each registration independent (the same function added twice
 * is two subscriptions), removal of one callback or of a whole type.
 */

/** A received or client-made event, as handed to listeners. */
export interface RealtimeMessage<P = unknown> {
  type: string;
  payload: P;
  /** `true` for events the client makes itself (not sent by the server). */
  synthetic?: boolean;
  /** Any other top-level field the server sent. */
  [field: string]: unknown;
}

/** `callback(payload, message)`. */
export type Listener<P = any> = (payload: P, message: RealtimeMessage<P>) => void;

/** Ends a subscription; calling it again does nothing. */
export interface Unsubscribe {
  (): void;
  /** The same function, for `sub.unsubscribe()` style. */
  unsubscribe(): void;
}

/** Every event type, in `on("*", cb)`. */
export const ANY = "*";

interface Entry {
  cb: Listener;
}

export class Listeners {
  #byType = new Map<string, Set<Entry>>();
  readonly #onError: (type: string, error: unknown) => void;

  constructor(onError: (type: string, error: unknown) => void) {
    this.#onError = onError;
  }

  /** Adds `cb` for `type`; returns its unsubscribe function. */
  on(type: string, cb: Listener): Unsubscribe {
    if (typeof cb !== "function") throw new TypeError("on(type, callback): callback must be a function");
    let set = this.#byType.get(type);
    if (!set) this.#byType.set(type, (set = new Set()));
    const entry: Entry = { cb };
    set.add(entry);
    const owner = set;
    return once(() => {
      owner.delete(entry);
      if (owner.size === 0 && this.#byType.get(type) === owner) this.#byType.delete(type);
    });
  }

  /**
   * `off(type, cb)` removes that callback (every registration of it) from
   * `type`; `off(type)` removes every callback of `type`; `off()` removes all.
   */
  off(type?: string, cb?: Listener): void {
    if (type === undefined) {
      this.#byType.clear();
      return;
    }
    const set = this.#byType.get(type);
    if (!set) return;
    if (cb === undefined) {
      this.#byType.delete(type);
      return;
    }
    for (const entry of [...set]) if (entry.cb === cb) set.delete(entry);
    if (set.size === 0) this.#byType.delete(type);
  }

  /** How many callbacks `type` has (`"*"` ones not included). */
  count(type: string): number {
    return this.#byType.get(type)?.size ?? 0;
  }

  /**
   * Calls the callbacks of `message.type`, then the `"*"` ones. A callback
   * that throws is reported through `onError` and does not stop the others.
   */
  emit(message: RealtimeMessage): void {
    const targets: Entry[] = [];
    for (const key of message.type === ANY ? [ANY] : [message.type, ANY]) {
      const set = this.#byType.get(key);
      if (set) targets.push(...set); // a copy: callbacks may unsubscribe
    }
    for (const entry of targets) {
      try {
        entry.cb(message.payload, message);
      } catch (e) {
        this.#onError(message.type, e);
      }
    }
  }
}

/** Wraps `fn` so that it runs at most once, callable as `f()` or `f.unsubscribe()`. */
export function once(fn: () => void): Unsubscribe {
  let done = false;
  const f = (() => {
    if (done) return;
    done = true;
    fn();
  }) as Unsubscribe;
  f.unsubscribe = f;
  return f;
}
