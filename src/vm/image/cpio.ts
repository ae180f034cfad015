/**
 * A cpio "newc" archive writer: the format the kernel unpacks as initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst). Entries are
 * written in the order given; parents must come before their children.
 */

export type CpioEntry =
  | { kind: "dir"; path: string; mode?: number }
  | { kind: "file"; path: string; data: Uint8Array; mode?: number }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "chardev"; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, "0");
const pad4 = (n: number) => (4 - (n % 4)) % 4;

export function writeCpio(entries: readonly CpioEntry[]): Uint8Array {
  const encoder = new TextEncoder();
  const chunks: Uint8Array[] = [];
  let size = 0;
  let ino = 1;
  const push = (b: Uint8Array) => {
    chunks.push(b);
    size += b.length;
  };
  const header = (name: string, mode: number, dataLen: number, nlink: number, rmajor = 0, rminor = 0) => {
    const nameBytes = encoder.encode(name + "\0");
    const fields = [ino++, mode, 0, 0, nlink, 0, dataLen, 0, 0, rmajor, rminor, nameBytes.length, 0];
    push(encoder.encode("070701" + fields.map(hex8).join("")));
    push(nameBytes);
    push(new Uint8Array(pad4(110 + nameBytes.length)));
  };
  const data = (bytes: Uint8Array) => {
    push(bytes);
    push(new Uint8Array(pad4(bytes.length)));
  };
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, "");
    switch (e.kind) {
      case "dir":
        header(name, S_IFDIR | (e.mode ?? 0o755), 0, 2);
        break;
      case "file":
        header(name, S_IFREG | (e.mode ?? 0o644), e.data.length, 1);
        data(e.data);
        break;
      case "symlink": {
        const target = encoder.encode(e.target);
        header(name, S_IFLNK | 0o777, target.length, 1);
        data(target);
        break;
      }
      case "chardev":
        header(name, S_IFCHR | (e.mode ?? 0o600), 0, 1, e.major, e.minor);
        break;
    }
  }
  header("TRAILER!!!", 0, 0, 1);
  const out = new Uint8Array(size + pad4(size));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
