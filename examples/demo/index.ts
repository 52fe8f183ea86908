// The `pgfn dev` demo: greets a new (or updated) user.
import { fail, input, logInfo, numberField, output, quote, stringField } from "../lib/pgfn";

export function handle(): i32 {
  const event = input();
  const operation = stringField(event, "operation");
  const newAt = event.indexOf('"new"');
  if (operation === null || newAt < 0) return fail("expected a database event with a new row");
  const email = stringField(event, "email", newAt);
  const name = stringField(event, "name", newAt);
  const who = email !== null ? email : name !== null ? name : "friend";
  const id = numberField(event, "id");
  logInfo("greeting " + who);
  output(
    '{"ok":true,"greeting":' +
      quote("Welcome, " + who + "!") +
      ',"event_id":' +
      (id !== null ? id : "null") +
      ',"operation":' +
      quote(operation) +
      "}",
  );
  return 0;
}
