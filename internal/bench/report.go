package bench

import (
	"fmt"
	"strings"
)

// Row is one line of the summary table: a figure for Moat, the same for
// Mosquitto where there is one, and the bar Moat is held to.
type Row struct {
	Scenario  string   `json:"scenario"`
	Unit      string   `json:"unit"`
	Moat      *float64 `json:"moat"`
	Mosquitto *float64 `json:"mosquitto,omitempty"`
	Ratio     *float64 `json:"ratio,omitempty"` // Moat / Mosquitto
	Bar       string   `json:"bar,omitempty"`
	// Met is "yes", "no" or "" (no bar, or nothing measured).
	Met  string `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
}

func ptr(v float64) *float64 { return &v }

// Bars from the issue (on a 2-core machine with the generator on it).
const (
	barQoS1Rate    = 25_000.0
	barQoS1Ratio   = 1.0
	barP99Ms       = 20.0
	barConnects    = 2_000.0
	barIdleBytes   = 20 * 1024.0
	barTwinReads   = 10_000.0
	barTwinUpdates = 5_000.0
)

func summaryRows(rep *Report) []Row {
	var rows []Row
	val := func(r *Result, f func(*Result) float64) *float64 {
		if r == nil || r.Failure != "" {
			return nil
		}
		return ptr(f(r))
	}
	rate := func(r *Result) float64 { return r.Rate }
	recv := func(r *Result) float64 { return r.ReceiveRate }
	p99 := func(r *Result) float64 {
		if r.Latency == nil {
			return 0
		}
		return r.Latency.P99
	}
	yesNo := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	lossNote := func(rs ...*Result) string {
		var parts []string
		for _, r := range rs {
			if r == nil {
				continue
			}
			if r.Failure != "" {
				parts = append(parts, r.Target+" failed: "+r.Failure)
				continue
			}
			if r.Lost > 0 || r.Dropped > 0 || r.Duplicates > 0 || r.Errors > 0 {
				parts = append(parts, fmt.Sprintf("%s: lost %d, dropped %d, dup %d, errors %d", r.Target, r.Lost, r.Dropped, r.Duplicates, r.Errors))
			}
		}
		return strings.Join(parts, "; ")
	}
	compare := func(scenario, unit, bar string, moat, mosq *Result, f func(*Result) float64, met func(m, q *float64) string) {
		row := Row{Scenario: scenario, Unit: unit, Moat: val(moat, f), Mosquitto: val(mosq, f), Bar: bar, Note: lossNote(moat, mosq)}
		if row.Moat != nil && row.Mosquitto != nil && *row.Mosquitto > 0 {
			row.Ratio = ptr(*row.Moat / *row.Mosquitto)
		}
		if met != nil && row.Moat != nil {
			row.Met = met(row.Moat, row.Ratio)
		}
		rows = append(rows, row)
	}
	mosq := func(s string) *Result { return rep.find(s, TargetMosquitto) }

	compare("D2C QoS 0, plain TCP, delivered", "msg/s", "", rep.find("d2c qos0", TargetMoatPlain), mosq("d2c qos0"), rate, nil)
	qos1Met := func(m, ratio *float64) string {
		return yesNo(*m >= barQoS1Rate && (ratio == nil || *ratio >= barQoS1Ratio))
	}
	compare("D2C QoS 1, plain TCP, acknowledged", "msg/s", "≥ 25,000 and ≥ 1.0× Mosquitto", rep.find("d2c qos1", TargetMoatPlain), mosq("d2c qos1"), rate, qos1Met)
	compare("D2C QoS 1, plain TCP, delivered at receiver", "msg/s", "", rep.find("d2c qos1", TargetMoatPlain), mosq("d2c qos1"), recv, nil)
	compare("D2C QoS 1, plain TCP, acknowledged, vs Mosquitto with a QoS 1 subscriber", "msg/s", "", rep.find("d2c qos1", TargetMoatPlain), rep.find("d2c qos1", TargetMosquittoSub1), rate, nil)
	compare("D2C QoS 0, Moat over TLS vs Mosquitto plain, delivered", "msg/s", "", rep.find("d2c qos0", TargetMoatTLS), mosq("d2c qos0"), rate, nil)
	compare("D2C QoS 1, Moat over TLS vs Mosquitto plain, acknowledged", "msg/s", "", rep.find("d2c qos1", TargetMoatTLS), mosq("d2c qos1"), rate, nil)
	compare("D2C QoS 1 durable, routed to 1 webhook endpoint, delivered", "msg/s", "≥ 25,000 and ≥ 1.0× Mosquitto", rep.find("d2c qos1", TargetMoatRouted1), mosq("d2c qos1"), recv, qos1Met)
	compare("D2C QoS 1 durable, routed to 3 webhook endpoints, delivered at all 3", "msg/s", "", rep.find("d2c qos1", TargetMoatRouted3), mosq("d2c qos1"), recv, nil)
	p99Met := func(m, _ *float64) string { return yesNo(*m <= barP99Ms) }
	paced := "half of peak"
	if rep.PacedRate > 0 {
		paced = fmt.Sprintf("%.0f msg/s", rep.PacedRate)
		p99Met = nil // the bar is defined at half of peak
	}
	compare("p99 device→endpoint latency, QoS 1 at "+paced+", routed to 1 webhook", "ms", "≤ 20 ms", rep.find("d2c qos1 paced", TargetMoatRouted1), mosq("d2c qos1 paced"), p99, p99Met)
	compare("p99 device→endpoint latency, QoS 1 at "+paced+", routed to 3 webhooks", "ms", "", rep.find("d2c qos1 paced", TargetMoatRouted3), nil, p99, nil)
	compare("p99 device→endpoint latency, QoS 1 at Mosquitto's paced rate, routed to 1 webhook", "ms", "", rep.find(ScenarioPacedAtMosquitto, TargetMoatRouted1), mosq("d2c qos1 paced"), p99, nil)
	compare("p99 end-to-end latency, QoS 1 at "+paced+", plain, live events stream", "ms", "", rep.find("d2c qos1 paced", TargetMoatPlain), mosq("d2c qos1 paced"), p99, nil)
	compare("p99 end-to-end latency, QoS 1 at "+paced+", Moat TLS, live events stream", "ms", "", rep.find("d2c qos1 paced", TargetMoatTLS), nil, p99, nil)
	connMet := func(m, _ *float64) string { return yesNo(*m >= barConnects) }
	storm := rep.find("connect storm", TargetMoatTLS)
	label := "TLS + SAS connects"
	if storm != nil {
		label = fmt.Sprintf("TLS + SAS connects, %d dialers", storm.Workers)
	}
	compare(label, "connects/s", "≥ 2,000", storm, nil, rate, connMet)
	compare("TLS + SAS connects, hybrid post-quantum key exchange (Go client default)", "connects/s", "", rep.find("connect storm", TargetMoatTLSHybrid), nil, rate, nil)
	compare("plain TCP + SAS connects", "connects/s", "", rep.find("connect storm", TargetMoatPlain), nil, rate, nil)
	for _, r := range rep.Results {
		if !strings.HasPrefix(r.Scenario, "idle ") {
			continue
		}
		r := r
		kind := "TLS"
		if r.Target == TargetMoatPlain {
			kind = "plain TCP"
		}
		compare(fmt.Sprintf("hub RSS per idle %s device at %s connections", kind, group(int64(r.Devices))), "bytes", "≤ 20 KiB", &r, nil,
			func(r *Result) float64 { return float64(r.RSSPerDevice) },
			func(m, _ *float64) string { return yesNo(*m <= barIdleBytes) })
	}
	compare("twin reads (REST)", "req/s", "≥ 10,000", rep.find("twin reads", TargetMoatTLS), nil, rate, func(m, _ *float64) string { return yesNo(*m >= barTwinReads) })
	compare("twin updates (REST)", "req/s", "≥ 5,000", rep.find("twin updates", TargetMoatTLS), nil, rate, func(m, _ *float64) string { return yesNo(*m >= barTwinUpdates) })
	compare("C2D messages delivered (REST send → MQTT device)", "msg/s", "", rep.find("c2d", TargetMoatPlain), nil, rate, nil)
	compare("device identities created (bulk REST, 100 per request)", "devices/s", "", rep.find("registry bulk create", TargetMoatTLS), nil, rate, nil)
	return rows
}

func fmtNum(v *float64, unit string) string {
	if v == nil {
		return "—"
	}
	switch {
	case unit == "ms":
		return fmt.Sprintf("%.2f", *v)
	case unit == "bytes":
		return fmt.Sprintf("%s (%.1f KiB)", group(int64(*v)), *v/1024)
	default:
		return group(int64(*v + 0.5))
	}
}

// group writes n with thousands separators.
func group(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// Markdown renders the report: the summary table, then every run in detail.
func Markdown(rep *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Moat benchmark (%s)\n\n", rep.Mode)
	m := rep.Machine
	fmt.Fprintf(&b, "- Date: %s (suite took %.0f s)\n", rep.Date.Format("2006-01-02 15:04 MST"), rep.Seconds)
	fmt.Fprintf(&b, "- Machine: %d CPUs, %s, %d MiB RAM, Linux %s, %s\n", m.CPUs, m.CPUModel, m.MemoryMB, m.Kernel, m.GoVersion)
	fmt.Fprintf(&b, "- Load average at start / end: %s / %s\n", m.LoadAvgStart, m.LoadAvgEnd)
	if rep.Mosquitto != "" {
		fmt.Fprintf(&b, "- Comparison broker: %s (set_tcp_nodelay true, persistence false)\n", rep.Mosquitto)
	}
	fmt.Fprintf(&b, "- Open-file limit: %d\n\n", rep.FileLimit)

	b.WriteString("| scenario | unit | Moat | Mosquitto | ratio | bar | met? |\n|---|---|---:|---:|---:|---|---|\n")
	for _, r := range rep.Summary {
		ratio := "—"
		if r.Ratio != nil {
			ratio = fmt.Sprintf("%.2f×", *r.Ratio)
		}
		met := r.Met
		if met == "" {
			met = "—"
		}
		bar := r.Bar
		if bar == "" {
			bar = "—"
		}
		scen := r.Scenario
		if r.Note != "" {
			scen += " (" + r.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", scen, r.Unit, fmtNum(r.Moat, r.Unit), fmtNum(r.Mosquitto, r.Unit), ratio, bar, met)
	}

	b.WriteString("\n## Runs\n\n")
	b.WriteString("| scenario | target | shape | rate/s | recv/s | sent | acked | received | dropped | lost | dup | errors | p50 ms | p99 ms | p99.9 ms | server CPU µs/op | notes |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rep.Results {
		shape := ""
		switch {
		case r.MessagesPerDevice > 0:
			shape = fmt.Sprintf("%d dev × %d msg", r.Devices, r.MessagesPerDevice)
			if r.Bytes > 0 {
				shape += fmt.Sprintf(" × %d B", r.Bytes)
			}
			if r.TargetRate > 0 {
				shape += fmt.Sprintf(" @ %s/s", group(int64(r.TargetRate)))
			}
		case r.Workers > 0:
			shape = fmt.Sprintf("%d dev, %d workers", r.Devices, r.Workers)
		default:
			shape = fmt.Sprintf("%d dev", r.Devices)
		}
		p50, p99, p999 := "—", "—", "—"
		if r.Latency != nil && r.Latency.Samples > 0 {
			p50, p99, p999 = fmt.Sprintf("%.2f", r.Latency.P50), fmt.Sprintf("%.2f", r.Latency.P99), fmt.Sprintf("%.2f", r.Latency.P999)
		}
		notes := append([]string{}, r.Notes...)
		if r.Failure != "" {
			notes = append([]string{"FAILED: " + r.Failure}, notes...)
		}
		if r.FirstErr != "" {
			notes = append(notes, "first error: "+r.FirstErr)
		}
		if r.RSSPerDevice != 0 {
			notes = append(notes, fmt.Sprintf("%s B RSS per device", group(r.RSSPerDevice)))
		}
		cpu := "—"
		if r.ServerCPUPerOp > 0 {
			cpu = fmt.Sprintf("%.1f", r.ServerCPUPerOp)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d | %d | %d | %d | %d | %d | %d | %s | %s | %s | %s | %s |\n",
			r.Scenario, r.Target, shape, group(int64(r.Rate+0.5)), group(int64(r.ReceiveRate+0.5)), r.Sent, r.Acked, r.Received, r.Dropped, r.Lost, r.Duplicates, r.Errors,
			p50, p99, p999, cpu, strings.ReplaceAll(strings.Join(notes, "; "), "|", "\\|"))
	}
	if len(rep.Caveats) > 0 {
		b.WriteString("\n## Caveats\n\n")
		for _, c := range rep.Caveats {
			fmt.Fprintf(&b, "- %s\n", c)
		}
	}
	return b.String()
}
