// E2B's JavaScript SDK, unchanged, against Corral: only E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY point it there. Prints one JSON line that test_e2b_js.py checks.
import { Sandbox } from 'e2b'

const sbx = await Sandbox.create('base', { timeoutMs: 120_000, metadata: { suite: 'e2b-js' } })
try {
  const run = await sbx.commands.run('echo "from js: $((6*7))"')
  await sbx.files.write('/root/from-js.txt', 'written by the JS SDK')
  const text = await sbx.files.read('/root/from-js.txt')
  const cat = await sbx.commands.run('cat /root/from-js.txt')
  console.log(JSON.stringify({
    sandboxId: sbx.sandboxId,
    stdout: run.stdout,
    exitCode: run.exitCode,
    text,
    cat: cat.stdout,
  }))
} finally {
  await sbx.kill()
}
