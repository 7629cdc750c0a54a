"""Every 10 s: load, established sockets, RSS and PSS of the agent's and the gateway's processes.

    python bench/monitor_100k.py LOG AGENT_CMDLINE_PART GATEWAY_CMDLINE_PART   (stops when the gateway is gone)
"""
import os
import subprocess
import sys
import time


def procs(needle: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if needle in b" ".join(argv).decode(errors="replace") and not argv[0].endswith(b"timeout"):
            found.append(int(pid))
    return found


def memory_kb(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def main() -> None:
    log, agent, gateway = sys.argv[1:4]
    with open(log, "a", buffering=1) as out:
        while True:
            a, g = procs(agent), procs(gateway)
            if not g:
                return
            (ar, ap), (gr, gp) = memory_kb(a), memory_kb(g)
            ss = subprocess.run(["ss", "-s"], capture_output=True, text=True).stdout
            est = ss.split("estab ")[1].split(",")[0] if "estab " in ss else "?"
            out.write(f"{time.strftime('%T')} load={os.getloadavg()[0]:.2f} estab={est} agent_procs={len(a)} "
                      f"agent_rss_kb={ar} agent_pss_kb={ap} gw_procs={len(g)} gw_rss_kb={gr} gw_pss_kb={gp}\n")
            time.sleep(10)


if __name__ == "__main__":
    main()
