// Drives `atr serve` with Medplum's MedplumClient (@medplum/core): search, read, the Bulk Data
// group export (bulkExport -> Group/[id]/$export) and the ATR $davinci-data-export through the
// client's async-request polling, then downloads every file. Prints one JSON summary on stdout.
// Input (environment): ATR_BASE (FHIR base URL), ATR_TOKEN (access token), ATR_IDENTIFIER (system|value).
// Node 20 has no WebSocket global, which @medplum/core references at load time (Node 22 has one).
globalThis.WebSocket ??= class {};
const { MedplumClient } = await import('@medplum/core');

const base = new URL(process.env.ATR_BASE + '/');
const medplum = new MedplumClient({
  baseUrl: base.origin + '/',
  fhirUrlPath: base.pathname.replace(/^\//, ''),
  fetch: globalThis.fetch.bind(globalThis),
});
medplum.setAccessToken(process.env.ATR_TOKEN);

async function files(manifest) {
  const counts = {};
  for (const item of manifest.output) {
    const blob = await medplum.download(item.url);
    const lines = (await blob.text()).split('\n').filter((l) => l.length > 0);
    for (const line of lines) {
      const resource = JSON.parse(line);
      if (resource.resourceType !== item.type) throw new Error(`${item.url}: ${resource.resourceType} in a ${item.type} file`);
    }
    counts[item.type] = (counts[item.type] ?? 0) + lines.length;
  }
  return counts;
}

const groups = await medplum.searchResources('Group', { identifier: process.env.ATR_IDENTIFIER, _summary: 'true' });
const group = await medplum.readResource('Group', groups[0].id);
const poll = { pollStatusOnAccepted: true, pollStatusPeriod: 200 };
const bulk = await medplum.bulkExport(`Group/${group.id}`, 'Group,Patient,Coverage', undefined, poll);
const atrUrl = medplum.fhirUrl('Group', group.id, '$davinci-data-export');
atrUrl.searchParams.set('exportType', 'hl7.fhir.us.davinci-atr');
const atr = await medplum.startAsyncRequest(atrUrl.toString(), poll);
let otherStatus = null;
try {
  await medplum.readResource('Group', process.env.ATR_OTHER_GROUP);
} catch (err) {
  otherStatus = err.outcome?.issue?.[0]?.code ?? String(err);
}
console.log(JSON.stringify({
  found: groups.length,
  groupId: group.id,
  members: group.member.length,
  bulk: { requiresAccessToken: bulk.requiresAccessToken, counts: await files(bulk) },
  atr: { requiresAccessToken: atr.requiresAccessToken, request: atr.request, counts: await files(atr) },
  otherGroup: otherStatus,
}));
