// The README's handler: greets a new user and records it with db_query.
// (A project of your own imports "pgfn/assemblyscript" instead.)
import { dbQuery, env, event, fail, logInfo, output, quote, replyOk } from "../../assemblyscript";

export function handle(): i32 {
  const row = event().getObject("new"); // the new row; null for a DELETE
  const email = row !== null ? row.getString("email") : null; // null if absent or null
  if (email === null) return fail("no email in the new row"); // FUNCTION_ERROR
  logInfo("greeting " + email); // into function_runs.logs and the daemon's log
  const reply = dbQuery("insert into greetings (email) values ($1)", "[" + quote(email) + "]");
  if (!replyOk(reply)) return fail(reply); // HOST_FUNCTION_ERROR
  const sender = env("SENDER");
  output('{"greeted":true,"from":' + quote(sender !== null ? sender : "us") + "}");
  return 0;
}
