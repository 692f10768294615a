package main

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// WritePlot draws throughput (top row) and p99 (bottom row) by W, one line
// per back end, one column per workload, to a .png or .svg file.
func (r *Results) WritePlot(path string) error {
	var workloads []string
	for _, row := range r.Summary {
		if !contains(workloads, row.Workload) {
			workloads = append(workloads, row.Workload)
		}
	}
	if len(workloads) == 0 {
		return fmt.Errorf("klock-bench: nothing to plot")
	}
	metrics := []struct {
		title string
		value func(Row) float64
	}{
		{"pairs/s", func(row Row) float64 { return row.PairsPerSec }},
		{"p99 of one pair (µs)", func(row Row) float64 { return row.P99us }},
	}
	// One legend for all panels, in a strip on the right.
	legend := plot.NewLegend()
	legend.Top, legend.Left = true, true
	plots := make([][]*plot.Plot, len(metrics))
	for m, metric := range metrics {
		plots[m] = make([]*plot.Plot, len(workloads))
		for c, wl := range workloads {
			p := plot.New()
			p.Title.Text = wl + ": " + metric.title
			p.X.Label.Text = "workers (W)"
			p.X.Scale = plot.LogScale{}
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
			var ticks plot.ConstantTicks
			for i, b := range r.order {
				var xys plotter.XYs
				for _, row := range r.Summary {
					if row.Backend == b && row.Workload == wl && metric.value(row) > 0 {
						xys = append(xys, plotter.XY{X: float64(row.Workers), Y: metric.value(row)})
						ticks = addTick(ticks, row.Workers)
					}
				}
				if len(xys) == 0 {
					continue
				}
				line, points, err := plotter.NewLinePoints(xys)
				if err != nil {
					return err
				}
				line.Color = palette[i%len(palette)]
				line.Dashes = plotutil.Dashes(i)
				points.Color = palette[i%len(palette)]
				points.Shape = plotutil.Shape(i)
				p.Add(line, points)
				if m == 0 && c == 0 {
					legend.Add(b, line, points)
				}
			}
			p.X.Tick.Marker = ticks
			plots[m][c] = p
		}
	}

	legendWidth := 1.5 * vg.Inch
	width := vg.Length(len(workloads))*4*vg.Inch + legendWidth
	height := 6 * vg.Inch
	var canvas interface {
		vg.CanvasSizer
		io.WriterTo
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".png":
		canvas = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(96))}
	case ".svg":
		canvas = vgsvg.New(width, height)
	default:
		return fmt.Errorf("klock-bench: -plot %q: want a .png or .svg file", path)
	}
	dc := draw.New(canvas)
	tiles := draw.Tiles{Rows: len(metrics), Cols: len(workloads), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, tiles, draw.Crop(dc, 0, -legendWidth, 0, 0))
	legend.Draw(draw.Crop(dc, width-legendWidth, 0, 0, -vg.Millimeter*6))
	for m := range plots {
		for c := range plots[m] {
			plots[m][c].Draw(canvases[m][c])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := canvas.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// palette has ten colours that stay apart from each other, so up to ten
// back ends get lines of their own colour.
var palette = []color.Color{
	color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xff, 0x7f, 0x0e, 0xff},
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff},
	color.RGBA{0x94, 0x67, 0xbd, 0xff}, color.RGBA{0x8c, 0x56, 0x4b, 0xff},
	color.RGBA{0xe3, 0x77, 0xc2, 0xff}, color.RGBA{0x7f, 0x7f, 0x7f, 0xff},
	color.RGBA{0xbc, 0xbd, 0x22, 0xff}, color.RGBA{0x17, 0xbe, 0xcf, 0xff},
}

func addTick(ticks plot.ConstantTicks, w int) plot.ConstantTicks {
	for _, t := range ticks {
		if t.Value == float64(w) {
			return ticks
		}
	}
	return append(ticks, plot.Tick{Value: float64(w), Label: strconv.Itoa(w)})
}
