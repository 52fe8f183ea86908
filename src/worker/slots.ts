/**
 * Handler slots: how many attempts this daemon runs at once, whatever the
 * jobs they come from. A job of many events starts only as many as there
 * are free slots, so the attempts it records `running` are the ones being
 * run: max_concurrency (which counts `running` attempts across daemons)
 * and a handler's deadline mean what they say, not "queued in some daemon".
 */
export class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly size: number) {
    this.free = size;
  }

  /** Waits until a slot is free, then takes up to `wanted` of the free ones; returns how many. */
  async take(wanted: number): Promise<number> {
    while (this.free === 0) await new Promise<void>((resolve) => this.waiting.push(resolve));
    const n = Math.min(Math.max(wanted, 1), this.free);
    this.free -= n;
    return n;
  }

  give(n = 1): void {
    this.free += n;
    // Each woken taker checks again; those that find none free wait again.
    for (const wake of this.waiting.splice(0)) wake();
  }

  /** Slots in use. */
  get busy(): number {
    return this.size - this.free;
  }
}
