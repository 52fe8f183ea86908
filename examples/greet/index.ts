// The README's handler: greets a new user and records it with db_query.
import {
  dbQuery,
  env,
  fail,
  input,
  logInfo,
  output,
  quote,
  replyOk,
  stringField,
} from "../lib/pgfn";

export function handle(): i32 {
  const event = input(); // the event JSON
  const email = stringField(event, "email", event.indexOf('"new"'));
  if (email === null) return fail("no email in the new row"); // FUNCTION_ERROR
  logInfo("greeting " + email); // into function_runs.logs and the daemon's log
  const reply = dbQuery("insert into greetings (email) values ($1)", "[" + quote(email) + "]");
  if (!replyOk(reply)) return fail(reply); // HOST_FUNCTION_ERROR
  const sender = env("SENDER");
  output('{"greeted":true,"from":' + quote(sender !== null ? sender : "us") + "}");
  return 0;
}
