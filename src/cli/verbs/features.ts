import type { Verb } from "../main.ts";
import { runtimeFeatures } from "../../spec/features.ts";

const features: Verb = {
  summary: "print the features this runtime supports, as JSON (like `runc features`)",
  usage: "",
  flags: [],
  run() {
    process.stdout.write(JSON.stringify(runtimeFeatures(), null, "    ") + "\n");
    return 0;
  },
};
export default features;
