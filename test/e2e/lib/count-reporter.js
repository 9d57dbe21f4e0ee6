'use strict';
// A node:test reporter that writes one JSON object with the counts of passed,
// failed and skipped tests (suites not counted) so run.js can add them up.
module.exports = async function* countReporter(source) {
  const counts = { passed: 0, failed: 0, skipped: 0, failures: [] };
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const d = event.data;
    if (d.details && d.details.type === 'suite') {
      // a suite fails on its own only when a hook fails; count that once
      if (event.type === 'test:fail' && d.details.error && d.details.error.failureType !== 'subtestsFailed') {
        counts.failed += 1;
        counts.failures.push(d.name);
      }
      continue;
    }
    if (d.skip || d.todo) counts.skipped += 1;
    else if (event.type === 'test:pass') counts.passed += 1;
    else {
      counts.failed += 1;
      counts.failures.push(d.name);
    }
  }
  yield JSON.stringify(counts) + '\n';
};
