'use strict';
// Stand-in for the official couchdb image's entry point: PouchDB Server speaking the CouchDB API
// on 0.0.0.0:5984, configured the way the official image is (see tests/e2e/standins.py):
// the admin from COUCHDB_USER / COUCHDB_PASSWORD, databases in /opt/couchdb/data.
const fs = require('fs');
const path = require('path');

const SERVER = '/opt/pouchdb-server/node_modules/pouchdb-server';
const DATA_DIR = '/opt/couchdb/data';
const ETC_DIR = '/opt/couchdb/etc';
const CONFIG = path.join(ETC_DIR, 'pouchdb-server.json');
const LOG_FILE = '/opt/couchdb/var/log/couchdb.log';

const user = process.env.COUCHDB_USER;
const password = process.env.COUCHDB_PASSWORD;
if (!user || !password) {
  // CouchDB 3 refuses to start without an admin ("Admin Party" is gone); so does this.
  console.error('CouchDB 3.0+ no longer runs in "Admin Party" mode: set COUCHDB_USER and COUCHDB_PASSWORD.');
  process.exit(1);
}

// ini files mounted into local.d (the official image reads them) are accepted and ignored.
const localD = path.join(ETC_DIR, 'local.d');
const ini = fs.existsSync(localD) ? fs.readdirSync(localD).filter((f) => f.endsWith('.ini')) : [];
if (ini.length > 0) {
  console.log(`[notice] stand-in: ignoring ${ini.map((f) => path.join(localD, f)).join(', ')}`);
}

// PouchDB Server reads its admins from this file (CouchDB's [admins] section) and replaces the
// password with its hash, so it is written fresh at every start from the environment.
fs.writeFileSync(CONFIG, JSON.stringify({ admins: { [user]: password }, log: { file: LOG_FILE } }) + '\n', {
  mode: 0o600,
});

// Routes CouchDB has and PouchDB Server lacks or mishandles go in front of its own: the first
// Express app created is PouchDB Server's outer app.
const expressPath = require.resolve('express', { paths: [SERVER] });
const express = require(expressPath);
let first = true;

function unauthenticated(req) {
  return !req.headers.authorization && !/(^|;\s*)AuthSession=/.test(req.headers.cookie || '');
}

function standInExpress() {
  const app = express();
  if (first) {
    first = false;
    // GET /_up: CouchDB's health endpoint (no authentication), missing from PouchDB Server.
    app.get('/_up', (req, res) => res.json({ status: 'ok', seeds: {} }));
    // Creating or deleting a database needs a server admin. CouchDB answers 401 to an anonymous
    // request; PouchDB Server with an admin configured crashes on it instead.
    app.use((req, res, next) => {
      if ((req.method === 'PUT' || req.method === 'DELETE') && /^\/[^/]+\/?$/.test(req.path) && unauthenticated(req)) {
        res.status(401).json({ error: 'unauthorized', reason: 'You are not a server admin.' });
        return;
      }
      next();
    });
  }
  return app;
}
Object.assign(standInExpress, express);
require.cache[expressPath].exports = standInExpress;

// `docker stop` sends SIGTERM to PID 1, which has no default handler: exit as CouchDB does.
process.on('SIGTERM', () => process.exit(0));

process.argv = [
  process.argv[0],
  path.join(SERVER, 'bin', 'pouchdb-server'),
  '--host', '0.0.0.0',
  '--port', '5984',
  '--dir', DATA_DIR,
  '--config', CONFIG,
  '--no-color',
];
require(path.join(SERVER, 'lib', 'index.js'));
