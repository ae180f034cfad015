import type { Verb } from "../main.ts";
import { runtimeFeatures } from "../../spec/features.ts";
import { writeStdout } from "../../util/output.ts";

const features: Verb = {
  summary: "print the features this runtime supports, as JSON (like `runc features`)",
  usage: "",
  flags: [],
  async run() {
    const report = runtimeFeatures();
    // Whether VM mode can run here (cheap facts only; `vm check` probes).
    const { vmFeatureAnnotations } = await import("../../vm/availability.ts");
    Object.assign(report.annotations, await vmFeatureAnnotations());
    writeStdout(JSON.stringify(report, null, "    ") + "\n");
    return 0;
  },
};
export default features;
