// The official TypeScript SDK's PTY, unchanged: an interactive shell over its WebSocket.
// Prints one JSON object of what the terminal showed; tests/local/test_sdk_typescript.py asserts on it.
// Node 20 has a WebSocket only behind --experimental-websocket (the test passes it); 22 has it always.
import { Sandbox } from "@opencomputer/sdk";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition, what) {
  for (let i = 0; i < 300; i++) {
    if (condition()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const sandbox = await Sandbox.create({ timeout: 0 });
const out = {};
try {
  let screen = "";
  const decoder = new TextDecoder();
  const session = await sandbox.pty.create({ cols: 120, rows: 40, onOutput: (bytes) => (screen += decoder.decode(bytes)) });
  out.sessionId = session.sessionId;
  await until(() => screen.includes("$"), "the prompt");
  await sleep(200); // the socket is open once output flows
  session.send("echo typed-$((6*7)); stty size; tty\n");
  await until(() => screen.includes("typed-42") && screen.includes("/dev/pts/"), "the command's output");
  out.screen = screen;
  session.close();
} finally {
  await sandbox.kill();
}
console.log(JSON.stringify(out));
