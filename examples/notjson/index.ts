// Answers with text that is not JSON: pgfn reports FUNCTION_ERROR. For tests.
import { output } from "../../assemblyscript";

export function handle(): i32 {
  output("hello, not json");
  return 0;
}
