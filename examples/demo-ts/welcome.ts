// The `pgfn dev --typescript` demo: greets a new (or updated) user, as
// examples/demo does in AssemblyScript.
import type { Handler } from "pgfn";

interface User {
  id: number;
  name: string;
  email: string;
}

const handle: Handler<User> = (event, ctx) => {
  if (event.trigger !== "database" || !event.new) {
    throw ctx.noRetry("expected a database event with a new row");
  }
  const who = event.new.email || event.new.name || "friend";
  ctx.log.info(`greeting ${who}`);
  return {
    ok: true,
    greeting: `Welcome, ${who}!`,
    event_id: event.id,
    operation: event.operation,
  };
};
export default handle;
