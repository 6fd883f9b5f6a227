// A Socket.IO client written against the seed fork's documented events (submit_job, cancel_job ->
// job_update), run by tests/server/test_socketio.py: node socketio_client.mjs URL TOKEN CONFIG
// Prints one JSON object with what it saw; the Python test checks it.
import { io } from "socket.io-client";

const [url, token, config] = process.argv.slice(2);
const deadline = Date.now() + 120_000;

function outcome(socket) {
  return new Promise((resolve) => {
    socket.on("connect", () => resolve({ connected: true }));
    socket.on("connect_error", (err) => resolve({ connected: false, error: err.message }));
  });
}

// Without the token the server refuses the connection.
const stranger = io(url, { reconnection: false });
const refused = await outcome(stranger);
stranger.close();

const socket = io(url, { auth: { token }, reconnection: false });
const updates = [];
const settled = {};
let wake = () => {};
socket.on("job_update", (data) => {
  updates.push(data);
  if (["done", "failed", "cancelled"].includes(data.status)) settled[data.id] = data.status;
  wake();
});
const connected = await outcome(socket);
if (!connected.connected) {
  console.log(JSON.stringify({ refused, connected }));
  process.exit(1);
}

const submitted = await socket.timeout(30_000).emitWithAck("submit_job", {
  id: "node-1", mode: "t2v", prompt: "A red circle moves right. <AUDCAP>a high tone<ENDAUDCAP>",
  options: { config, seed: 5, videoGuidanceScale: 4 },
});
const other = await socket.timeout(30_000).emitWithAck("submit_job", {
  id: "node-2", mode: "t2v", prompt: "A green square moves up.", options: { config, sampleSteps: 100 },
});
const cancelled = await socket.timeout(30_000).emitWithAck("cancel_job", { id: "node-2" });
const serverPath = await socket.timeout(30_000).emitWithAck("submit_job", {
  mode: "i2v", prompt: "x", options: { config, image: "/etc/hostname" },
});
const engineSetting = await socket.timeout(30_000).emitWithAck("submit_job", {
  prompt: "x", options: { config, ckpt_dir: "/tmp/ovi-node-ckpt" },
});

while (!(settled["node-1"] && settled["node-2"]) && Date.now() < deadline) {
  await new Promise((resolve) => { wake = resolve; setTimeout(resolve, 1000); });
}
socket.close();
console.log(JSON.stringify({ refused, submitted, other, cancelled, serverPath, engineSetting, settled, updates }));
