// Preloaded into a kernel by bench/ab.ts (`node --import`): V8's sampling heap profiler, collected objects
// included, started by the first SIGUSR2 and stopped by the second, which writes the profile to
// $NOPS_BENCH_HEAP_DIR/heap-<pid>.json. Bytes allocated per call is the sum of the profile's sizes over
// the calls made between the two signals.
import { Session } from "node:inspector";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const session = new Session();
session.connect();
let sampling = false;
process.on("SIGUSR2", () => {
  if (!sampling) {
    sampling = true;
    session.post("HeapProfiler.startSampling", {
      samplingInterval: 1024,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    return;
  }
  sampling = false;
  session.post("HeapProfiler.stopSampling", (err, result) => {
    if (err) throw err;
    const file = join(process.env.NOPS_BENCH_HEAP_DIR ?? ".", `heap-${process.pid}.json`);
    // Written whole, then renamed: the bench reads the file as soon as it exists.
    writeFileSync(`${file}.part`, JSON.stringify(result.profile));
    renameSync(`${file}.part`, file);
  });
});
