// scripts/test.ts (npm test): the closing summary's counts and the failures it
// repeats at the end, so that CI's tail of the log names a failed test.
import { describe, expect, test } from "bun:test";
import { failedTestReports, parseBunSummary } from "../../scripts/test.ts";

const RUN_WITH_ONE_FAILURE = `bun test v1.4.5

test/unit/a.test.ts:
(pass) ok [0.28ms]
3 | test("bad one", () => { expect(2).toBe(3); });
                                      ^
error: expect(received).toBe(expected)

Expected: 3
Received: 2

      at <anonymous> (/tmp/a.test.ts:3:48)
(fail) suite > bad one [0.80ms]
(pass) ok2 [0.03ms]

test/unit/b.test.ts:
(pass) fine [1.00ms]

 3 pass
 1 fail
Ran 4 tests across 2 files. [195.00ms]

1 tests failed:
(fail) suite > bad one [0.80ms]
`;

describe("npm test's summary", () => {
  test("counts come from bun's closing lines", () => {
    expect(parseBunSummary(RUN_WITH_ONE_FAILURE)).toEqual({ passed: 3, failed: 1, skipped: 0, found: true });
    expect(parseBunSummary("crashed before any summary").found).toBe(false);
  });

  test("a failure is repeated once, with the error bun printed before it and nothing of the test before", () => {
    const reports = failedTestReports(RUN_WITH_ONE_FAILURE);
    expect(reports).toHaveLength(1);
    const report = reports[0]!;
    expect(report.split("\n")[0]).toBe("(fail) suite > bad one [0.80ms]");
    expect(report).toContain("Received: 2");
    expect(report).toContain("/tmp/a.test.ts:3:48");
    expect(report).not.toContain("(pass) ok");
  });

  test("a run without failures repeats nothing", () => {
    expect(failedTestReports("a.test.ts:\n(pass) ok [1ms]\n\n 1 pass\n 0 fail\n")).toEqual([]);
  });
});
