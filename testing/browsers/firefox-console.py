"""The web console in Firefox, by hand (outside CI): opens a console URL in headless Firefox
over WebDriver BiDi, waits for the node id and the objects to show, prints what it sees and
saves a screenshot.

    apt-get install firefox-esr && pip install websockets
    python3 testing/browsers/firefox-console.py "$(ron console --no-open)" console-firefox.png
"""
import asyncio, json, base64, sys, subprocess, tempfile, time, websockets
URL = sys.argv[1]
OUT = sys.argv[2] if len(sys.argv) > 2 else "console-firefox.png"
PROFILE = tempfile.mkdtemp(prefix="ron-firefox-")
async def main():
    p = subprocess.Popen(["firefox-esr", "--headless", "--remote-debugging-port", "9333", "--profile", PROFILE, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(60):
        try:
            ws = await websockets.connect("ws://127.0.0.1:9333/session", max_size=None)
            break
        except Exception:
            time.sleep(0.5)
    n = 0
    async def call(method, params):
        nonlocal n
        n += 1
        await ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            m = json.loads(await ws.recv())
            if m.get("id") == n:
                if m.get("type") == "error": raise Exception(m)
                return m["result"]
    await call("session.new", {"capabilities": {}})
    tree = await call("browsingContext.getTree", {})
    ctx = tree["contexts"][0]["context"]
    await call("browsingContext.setViewport", {"context": ctx, "viewport": {"width": 1300, "height": 1000}})
    await call("browsingContext.navigate", {"context": ctx, "url": URL, "wait": "complete"})
    for _ in range(100):
        r = await call("script.evaluate", {"expression": "document.querySelectorAll('#objects tbody tr').length + '|' + document.getElementById('node-id').textContent", "target": {"context": ctx}, "awaitPromise": True})
        v = r["result"].get("value", "")
        if not v.startswith("0|"): break
        time.sleep(0.2)
    time.sleep(4.5)
    print("firefox sees:", v)
    shot = await call("browsingContext.captureScreenshot", {"context": ctx})
    open(OUT, "wb").write(base64.b64decode(shot["data"]))
    p.kill()
asyncio.run(main())
