import { existsSync, writeFileSync } from "node:fs";
import type { Verb } from "../main.ts";
import { defaultSpec } from "../../spec/default.ts";
import { ContainerError } from "../../util/errors.ts";

const spec: Verb = {
  summary: "write a default config.json (like `runc spec`)",
  usage: "[--bundle DIR] [--rootless]",
  flags: [
    { name: "bundle", short: "b", kind: "string", value: "DIR", help: "write into DIR instead of the current directory" },
    { name: "rootless", kind: "bool", help: "a config for a container run by a non-root user" },
  ],
  run(_global, flags) {
    const dir = (flags.bundle as string | undefined) ?? ".";
    const path = `${dir}/config.json`;
    if (existsSync(path)) throw new ContainerError("spec-exists", `File ${path} exists. Remove it first`);
    writeFileSync(path, JSON.stringify(defaultSpec({ rootless: Boolean(flags.rootless) }), null, "\t") + "\n");
    return 0;
  },
};
export default spec;
