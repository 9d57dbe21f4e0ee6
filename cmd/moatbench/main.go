// Command moatbench runs Moat's benchmark suite: it starts a hub from a built
// binary (and Mosquitto for comparison) on loopback addresses, measures
// telemetry, connects, idle connections, twins and cloud-to-device traffic,
// and writes results.json and results.md. `make bench` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"runtime/debug"
	"runtime/pprof"
	"syscall"

	"github.com/moat-iot/moat/internal/bench"
)

func main() { os.Exit(run()) }

func run() int {
	var cfg bench.Config
	flag.StringVar(&cfg.MoatBin, "moat-bin", "bin/moat", "the built moat binary")
	flag.StringVar(&cfg.MosquittoBin, "mosquitto", "", "mosquitto binary (default /usr/sbin/mosquitto or PATH); \"none\" skips the comparison")
	flag.StringVar(&cfg.OutDir, "out", "bench-results", "directory for results.json and results.md")
	flag.StringVar(&cfg.WorkDir, "work-dir", "", "directory for the hub's data and logs (default: a temporary one, removed afterwards)")
	flag.BoolVar(&cfg.Quick, "quick", false, "a small smoke run (under a minute)")
	flag.StringVar(&cfg.HubIP, "hub-ip", "127.0.0.50", "loopback address for the hub")
	flag.StringVar(&cfg.MosquittoIP, "mosquitto-ip", "127.0.0.51", "loopback address for Mosquitto")
	flag.IntVar(&cfg.HTTPSPort, "https-port", 443, "the hub's REST port")
	flag.Float64Var(&cfg.PacedRate, "paced-rate", 0, "pace the latency runs at this many msg/s instead of half of each target's peak (0: half of peak, as the bar is defined)")
	flag.Float64Var(&cfg.PacedSeconds, "paced-seconds", 0, "length of each paced latency run (0: 5 s, 1 s with --quick)")
	cpuProfile := flag.String("cpuprofile", "", "write the generator's own CPU profile to this file (the hub's: MOATBENCH_PPROF=1 and its /debug/pprof)")
	only := flag.String("only", "", `run only the scenarios whose label matches this regular expression (labels: "d2c qos0|1 TARGET", "paced TARGET", "twin reads", "twin updates", "c2d", "storm TARGET", "idle"; targets moat-plain, moat-tls, moat-plain-routed-1, moat-plain-routed-3, mosquitto)`)
	flag.Parse()
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fmt.Fprintf(os.Stderr, "moatbench: --only: %v\n", err)
			return 2
		}
		cfg.Only = re
	}
	cfg.Log = os.Stderr
	if os.Getenv("GOGC") == "" {
		// The generator shares the hub's cores: its own collections are
		// overhead charged to the hub's figures, and memory is plentiful.
		debug.SetGCPercent(400)
	}

	switch cfg.MosquittoBin {
	case "none":
		cfg.MosquittoBin = ""
	case "":
		p, err := bench.FindMosquitto()
		if err != nil {
			fmt.Fprintln(os.Stderr, "moatbench: mosquitto not found; running without the comparison")
		}
		cfg.MosquittoBin = p
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "moatbench:", err)
			return 2
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "moatbench:", err)
			return 2
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if rep != nil {
		if werr := bench.WriteReport(cfg.OutDir, rep); werr != nil {
			fmt.Fprintln(os.Stderr, "moatbench:", werr)
			return 1
		}
		fmt.Print(bench.Markdown(rep))
		fmt.Fprintf(os.Stderr, "moatbench: wrote %s/results.json and results.md\n", cfg.OutDir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "moatbench:", err)
		return 1
	}
	return 0
}
