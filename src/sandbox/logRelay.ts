/**
 * A handler's log lines, sent from its sandbox thread to the pool as they are
 * written, so that a run whose thread is killed at its deadline (TIMEOUT) or
 * dies (a crash, out of heap) still records the lines it wrote before: those
 * are the runs whose lines are needed, and the outcome message that carries
 * the lines otherwise never comes.
 *
 * Each line is posted on a MessagePort of its own (not the thread's, where
 * host calls and outcomes go) that the pool does not listen on: the lines
 * wait in the port's queue and cost the main thread nothing while the run
 * goes well. The pool empties the queue when the outcome arrives, and drains
 * it with receiveMessageOnPort when it kills the thread or the thread dies:
 * synchronously, so every line posted before that moment is there, in order,
 * without waiting for the thread's exit. A posted message survives the
 * thread that posted it.
 *
 * The thread posts only the lines it keeps (captureLogger's cap) and counts
 * the dropped ones in shared memory, so a handler logging in a loop until
 * its deadline queues at most MAX_LOG_LINES - 1 messages; the pool applies
 * the same caps to what it drains.
 */
import { MessageChannel, receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import {
  droppedLine,
  MAX_LOG_LINES,
  MAX_MESSAGE_CHARS,
  type HandlerLog,
  type LogSink,
} from "./logs.js";

/** The thread's end, sent in workerData (the port in its transferList). */
export interface ThreadLogEnd {
  readonly port: MessagePort;
  /** An Int32: the lines dropped past the cap in the current run. */
  readonly dropped: SharedArrayBuffer;
}

/** In the sandbox thread: the sink for captureLogger that posts each line kept. */
export function relaySink(end: ThreadLogEnd): LogSink {
  const dropped = new Int32Array(end.dropped);
  return {
    kept: (line) => end.port.postMessage(line),
    dropped: (count) => Atomics.store(dropped, 0, count),
  };
}

/** The pool's end, one per thread; the thread runs one invocation at a time. */
export class LogRelay {
  private readonly port: MessagePort;
  private readonly dropped = new Int32Array(new SharedArrayBuffer(4));
  /** For the new thread's workerData; its port goes in the transferList. */
  readonly threadEnd: ThreadLogEnd;

  constructor() {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.threadEnd = { port: port2, dropped: this.dropped.buffer as SharedArrayBuffer };
  }

  /**
   * Forgets the lines of the run whose outcome just arrived (it carries
   * them): the thread posted them all before it.
   */
  clear(): void {
    while (receiveMessageOnPort(this.port));
    Atomics.store(this.dropped, 0, 0);
  }

  /** The lines of the run in progress, posted so far, capped as captureLogger caps them. */
  take(): HandlerLog[] {
    const lines: HandlerLog[] = [];
    let beyond = 0;
    for (let m = receiveMessageOnPort(this.port); m; m = receiveMessageOnPort(this.port)) {
      if (lines.length >= MAX_LOG_LINES - 1) {
        beyond++;
        continue;
      }
      const line = m.message as HandlerLog;
      lines.push(
        line.message.length > MAX_MESSAGE_CHARS
          ? { ...line, message: line.message.slice(0, MAX_MESSAGE_CHARS) }
          : line,
      );
    }
    const dropped = Atomics.load(this.dropped, 0) + beyond;
    if (dropped > 0) lines.push(droppedLine(dropped));
    Atomics.store(this.dropped, 0, 0);
    return lines;
  }

  close(): void {
    this.port.close();
  }
}
