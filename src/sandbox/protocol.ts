/** Messages between the sandbox pool (main thread) and its sandbox threads (thread.ts). */
import type { InvokeOutcome } from "./invocation.js";
import type { HandlerModule } from "./module.js";

/** Main -> thread: run one invocation. */
export interface InvokeMessage {
  readonly type: "invoke";
  readonly id: number;
  /** Which module: the thread keeps the ones it was sent. */
  readonly moduleId: number;
  /**
   * Compiled and memory-guarded; sent only the first time a thread runs it
   * (cloning a Module into a thread costs more than the whole echo handler).
   */
  readonly module?: HandlerModule;
  readonly input: unknown;
  readonly entry: string;
  readonly memoryLimitBytes: number;
  readonly config: Readonly<Record<string, string>>;
  /** Host functions the main thread serves for this invocation. */
  readonly hostFunctions: readonly string[];
  /** Date.now() by which the invocation is killed. */
  readonly deadline: number;
}

/** Thread -> main: a host function call; the thread blocks until answered. */
export interface HostCallMessage {
  readonly type: "host";
  readonly id: number;
  readonly name: string;
  readonly payload: unknown;
}

/** Thread -> main: the outcome. */
export interface ResultMessage {
  readonly type: "result";
  readonly id: number;
  readonly outcome: InvokeOutcome;
  /** The thread passed its memory backstop: replace it. */
  readonly recycle?: boolean;
}

/** What a host call returns to the handler, as JSON. */
export type HostReply =
  | { readonly ok: true; readonly value: unknown }
  | {
      readonly ok: false;
      readonly error: {
        readonly message: string;
        readonly transient: boolean;
        /** The SQLSTATE of a statement the server refused (db_query), e.g. 23505. */
        readonly code?: string;
      };
    };

/**
 * The shared buffer a thread blocks on during a host call: an Int32 state
 * (0 waiting, 1 answered), an Int32 byte length, then the reply's JSON.
 */
export const HOST_BUFFER_BYTES = 4 * 1024 * 1024;
export const HOST_HEADER_BYTES = 8;

/**
 * A host function's argument beyond this is refused before it is read or
 * sent to the main thread: as much as a reply may be. (4 MiB)
 */
export const MAX_HOST_ARGUMENT_BYTES = HOST_BUFFER_BYTES;
