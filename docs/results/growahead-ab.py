"""The A/B of buffer.growAhead (since removed): two map writers at once, each pickling
records into blocks of its own fresh arena, as a 2-executor map stage on this 2-core
machine. Runs only at commit c6c8ab8, where the feature existed:

    git checkout c6c8ab8 && make setup && .venv/bin/python docs/results/growahead-ab.py

Result (2026-12-07 05:05): no ahead 495 ms median, ahead with mlock 606 ms, ahead with
populate only 568 ms, no ahead and no pin 505 ms (all grows ahead in the ahead variants).
"""
# ruff: noqa
import sys, time, statistics as st, subprocess
from netspark.config import NetsparkConf
from netspark.buffer_manager.arena import Arena
WRITER = r'''
import sys, time, pickle, random
from netspark.buffer_manager.arena import Arena
from netspark.buffer_manager.pool import BlockPool
a = Arena.attach(sys.argv[1]); pool = BlockPool(a, batch=8)
records = [(random.randrange(1 << 30), random.randbytes(100)) for _ in range(1000)]
t = time.perf_counter()
for task in range(8):  # 8 tasks of ~24 MiB
    for _ in range(12):
        v = pool.view(pool.acquire()); at = 0
        while at + 200_000 <= len(v):
            data = pickle.dumps(records, protocol=5)
            v[at:at + len(data)] = data; at += len(data)
print(time.perf_counter() - t)
'''
variants = {"no ahead": (0, True), "ahead, mlock": (16, True), "ahead, populate only": (16, False), "no ahead, no pin": (0, False)}
res = {k: [] for k in variants}; info = {}
for rep in range(5):
    for name, (ahead, pin) in variants.items():
        arenas = [Arena.create(NetsparkConf.from_spark({})) for _ in range(2)]
        for a in arenas:
            if not pin:
                a._try_pin = lambda offset, length: False
            a.start_maintenance(30, 2, free_ahead=ahead)
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, a.path], pass_fds=(a.fd,), stdout=subprocess.PIPE, text=True) for a in arenas]
        res[name].append(max(float(p.communicate()[0]) for p in procs))
        info[name] = [(a.stats().grows, a.stats().grown_ahead) for a in arenas]
        for a in arenas: a.close()
for name, times in res.items():
    print(f"{name}: {st.median(times)*1e3:.0f} ms median ({', '.join(f'{x*1e3:.0f}' for x in times)}); (grows, ahead) {info[name]}")
