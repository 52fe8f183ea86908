// Always fails: a thrown error becomes the run's error message (FUNCTION_ERROR).
// The import brings in pgfnAbort, which build.js makes AssemblyScript's abort.
import "../../assemblyscript";

export function handle(): i32 {
  throw new Error("demo failure");
}
