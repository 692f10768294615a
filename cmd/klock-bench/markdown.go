package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// WriteMarkdown writes the machine, the peers' settings, the summary table
// and the targets as Markdown, ready to paste into BENCHMARKS.md.
func (r *Results) WriteMarkdown(path string) error {
	var b strings.Builder
	r.markdown(&b)
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func (r *Results) markdown(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "Run %s: `%s`\n\n", m.StartedAt, r.Command)
	fmt.Fprintf(w, "Machine: %d CPUs (`nproc`), %s, Linux %s, %s; load average at start %s.\n",
		m.CPUs, m.CPUModel, m.Kernel, m.Go, m.LoadAvg)
	fmt.Fprintf(w, "Each cell: %s measured after a warm-up, %d repetition(s) interleaved across back ends; values are medians over repetitions, ratios are medians of per-repetition ratios.\n\n", r.Duration, r.Reps)
	fmt.Fprintln(w, "| "+strings.Join(rowHeader, " | ")+" |")
	fmt.Fprintln(w, "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, row := range r.Summary {
		fmt.Fprintln(w, "| "+strings.Join(row.columns(), " | ")+" |")
	}
	if peers := r.aofPeers(); peers != "" {
		fmt.Fprintf(w, "\n%s are compared with redis-aof.\n", peers)
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(w, "\nSkipped: %s\n", s)
	}
	for _, t := range r.extraTables() {
		fmt.Fprintf(w, "\n%s%s:\n\n", strings.ToUpper(t.title[:1]), t.title[1:])
		fmt.Fprintln(w, "| "+strings.Join(t.header, " | ")+" |")
		fmt.Fprintln(w, t.align)
		for _, row := range t.rows {
			fmt.Fprintln(w, "| "+strings.Join(row, " | ")+" |")
		}
	}
	fmt.Fprintln(w, "\nTargets:\n\n| subject | goal | measured ratio | verdict |\n|---|---|--:|---|")
	for _, t := range r.Targets {
		verdict := "not measured"
		if t.Pass != nil {
			verdict = "**MISS**"
			if *t.Pass {
				verdict = "pass"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.Subject, t.Goal, fmtRatio(t.Ratio), verdict)
	}
	fmt.Fprint(w, "\nPeer settings:\n\n")
	names := make([]string, 0, len(r.Settings))
	for n := range r.Settings {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return slices.Index(r.order, a) - slices.Index(r.order, b) })
	for _, n := range names {
		fmt.Fprintf(w, "- `%s`: %s\n", n, r.Settings[n])
	}
}
