// Prints the SHA-256 of proto/gantry/v1/*.proto (sorted), as the Go and Python
// clients record it: the staleness test compares it with src/gen/PROTO_SHA256.
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const dir = path.join(__dirname, "..", "..", "..", "proto", "gantry", "v1");
const hash = crypto.createHash("sha256");
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".proto")).sort()) {
  hash.update(fs.readFileSync(path.join(dir, f)));
}
console.log(hash.digest("hex"));
