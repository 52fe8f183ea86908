// The `pgfn dev` demo: greets a new (or updated) user.
import { event, fail, logInfo, output, quote } from "../../assemblyscript";

export function handle(): i32 {
  const e = event();
  const operation = e.getString("operation");
  const row = e.getObject("new");
  if (operation === null || row === null) return fail("expected a database event with a new row");
  const email = row.getString("email");
  const name = row.getString("name");
  const who = email !== null ? email : name !== null ? name : "friend";
  const id = e.get("id");
  logInfo("greeting " + who);
  output(
    '{"ok":true,"greeting":' +
      quote("Welcome, " + who + "!") +
      ',"event_id":' +
      (id !== null ? id.toString() : "null") +
      ',"operation":' +
      quote(operation) +
      "}",
  );
  return 0;
}
