// The official TypeScript SDK, unchanged, against OPENCOMPUTER_API_URL / OPENCOMPUTER_API_KEY.
// Prints one JSON object of what each step saw; tests/local/test_sdk_typescript.py asserts on it.
import { Sandbox } from "@opencomputer/sdk";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function readyCheckpoint(sandbox, id) {
  for (let i = 0; i < 600; i++) {
    const listed = (await sandbox.listCheckpoints()) ?? [];
    const checkpoint = listed.find((c) => c.id === id);
    if (checkpoint?.status === "ready") return checkpoint;
    if (checkpoint?.status === "failed") throw new Error(`checkpoint failed: ${checkpoint.errorMsg}`);
    await sleep(100);
  }
  throw new Error("checkpoint never became ready");
}

const out = {};
const sandbox = await Sandbox.create({ timeout: 0, envs: { GREETING: "hello from ts" } });
let fork;
try {
  out.sandboxId = sandbox.sandboxId;
  out.isRunning = await sandbox.isRunning();

  // exec.run goes through exec/run-async and polls exec/{id}/result when the command takes a while.
  out.quick = await sandbox.exec.run("echo $GREETING; echo oops >&2; exit 3");
  out.slow = await sandbox.exec.run("sleep 1.2; echo slow done");

  await sandbox.files.write("/home/sandbox/project/state.txt", "v1");
  out.read = await sandbox.files.read("/home/sandbox/project/state.txt");
  out.exists = await sandbox.files.exists("/home/sandbox/project/state.txt");
  out.listed = (await sandbox.files.list("/home/sandbox/project")).map((e) => e.name);

  const checkpoint = await sandbox.createCheckpoint("ts-proof");
  out.checkpointStatus = (await readyCheckpoint(sandbox, checkpoint.id)).status;
  const patch = await Sandbox.createCheckpointPatch(checkpoint.id, {
    script: "echo patched > /home/sandbox/patched.txt",
    description: "from the TypeScript SDK",
  });
  out.patchSequence = patch.patch.sequence;

  fork = await Sandbox.createFromCheckpoint(checkpoint.id, { timeout: 0 });
  out.forkState = await fork.files.read("/home/sandbox/project/state.txt");
  out.forkPatched = (await fork.exec.run("cat /home/sandbox/patched.txt")).stdout;

  const preview = await sandbox.createPreviewURL({ port: 8080 });
  out.previewHostname = preview.hostname;
  out.previewPorts = (await sandbox.listPreviewURLs()).map((p) => p.port);
  await sandbox.deletePreviewURL(8080);
} finally {
  if (fork) await fork.kill();
  await sandbox.kill();
}
out.runningAfterKill = await sandbox.isRunning();
console.log(JSON.stringify(out));
