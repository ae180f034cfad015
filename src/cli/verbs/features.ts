import type { Verb } from "../main.ts";
import { runtimeFeatures } from "../../spec/features.ts";
import { writeStdout } from "../../util/output.ts";

const features: Verb = {
  summary: "print the features this runtime supports, as JSON (like `runc features`)",
  usage: "",
  flags: [],
  run() {
    writeStdout(JSON.stringify(runtimeFeatures(), null, "    ") + "\n");
    return 0;
  },
};
export default features;
