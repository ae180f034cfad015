/**
 * The image builder's dealings with the outside world: running a tool (and
 * failing with its last lines of output), apt's metadata for a package, and
 * a long-running tool whose output is turned into progress lines.
 */
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { NanoKataError } from "../../util/errors.ts";

/** Everything `vm build-image` can fail on; `code` says which stage. */
export class ImageError extends NanoKataError {
  constructor(message: string, code = "image-build-failed") {
    super(code, message);
  }
}

/** A Debian package as apt's lists describe it: what the stamp records. */
export interface AptPackage {
  name: string;
  version: string;
  /** The .deb's SHA256 from apt's metadata ("" when the lists do not know this version). */
  sha256: string;
}

function lastLines(text: string, n: number): string {
  return text.trim().split("\n").slice(-n).join(" | ");
}

export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, env: opts.env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 << 20 });
  if (r.error) throw new ImageError(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new ImageError(`${cmd} ${args.join(" ")} failed (exit ${r.status}): ${lastLines(r.stderr || r.stdout, 3)}`);
  return r.stdout;
}

/** A field of one package stanza (`apt-cache show` output). */
export function debField(stanza: string, field: string): string | undefined {
  return new RegExp(`^${field}: (.+)$`, "m").exec(stanza)?.[1]?.trim();
}

/** apt's record of a package: the candidate version, or the one named. */
export function aptPackage(name: string, version?: string): AptPackage {
  const show = run("apt-cache", ["show", "--no-all-versions", version ? `${name}=${version}` : name]);
  const found = debField(show, "Version");
  const sha256 = debField(show, "SHA256");
  if (!found || !sha256) throw new ImageError(`apt-cache show ${name}: no Version/SHA256 (run apt-get update?)`, "image-apt");
  return { name, version: found, sha256 };
}

/** The installed version of a package, or undefined. */
export function installedVersion(name: string): string | undefined {
  const r = spawnSync("dpkg-query", ["-W", "-f=${db:Status-Status} ${Version}", name], { encoding: "utf8" });
  const m = r.status === 0 ? /^installed (\S+)$/.exec(r.stdout.trim()) : null;
  return m?.[1];
}

export function sha256File(path: string): string {
  const hasher = new Bun.CryptoHasher("sha256");
  hasher.update(readFileSync(path));
  return hasher.digest("hex");
}

/** The first line of `tool --version` ("" when the tool is missing): part of a build's inputs. */
export function toolVersion(tool: string): string {
  const r = spawnSync(tool, ["--version"], { encoding: "utf8" });
  return r.status === 0 ? (r.stdout.split("\n")[0] ?? "").trim() : "";
}

/**
 * Run a long build step, handing each output line to `onLine`; resolves when
 * it succeeded, else fails with the last lines of its output (the compiler's
 * error is usually there).
 */
export function runStreaming(cmd: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv; onLine: (line: string) => void }): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"] });
    const tail: string[] = [];
    let partial = "";
    const take = (chunk: Buffer) => {
      partial += chunk.toString("utf8");
      let nl: number;
      while ((nl = partial.indexOf("\n")) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        tail.push(line);
        if (tail.length > 30) tail.shift();
        opts.onLine(line);
      }
    };
    child.stdout!.on("data", take);
    child.stderr!.on("data", take);
    child.on("error", (e) => reject(new ImageError(`${cmd}: ${e.message}`)));
    child.on("close", (code, signal) => {
      if (code === 0) resolve();
      else reject(new ImageError(`${cmd} ${args.join(" ")} failed (${signal ?? `exit ${code}`}):\n${tail.filter((l) => l.trim()).slice(-12).join("\n")}`, "image-kernel-build"));
    });
  });
}
