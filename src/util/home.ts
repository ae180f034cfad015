/** Where the project is installed: bin/nk-runtime exports NK_HOME; tests and `bun src/...` fall back to the source tree. */
import { existsSync } from "node:fs";
import { dirname } from "node:path";

let home: string | undefined;

export function projectHome(): string {
  if (home) return home;
  if (process.env.NK_HOME) return (home = process.env.NK_HOME);
  // The compiled executable (dist/nk-runtime) run directly: the project is its parent's parent.
  if (!process.execPath.endsWith("/bun") && !process.execPath.endsWith("/bun.exe")) {
    const candidate = dirname(dirname(process.execPath));
    if (existsSync(`${candidate}/native/build/nk-exec`)) return (home = candidate);
  }
  let dir = import.meta.dir;
  while (dir !== "/" && !existsSync(`${dir}/package.json`)) dir = dirname(dir);
  return (home = dir);
}

export function executorPath(): string {
  return process.env.NK_EXECUTOR ?? `${projectHome()}/native/build/nk-exec`;
}
