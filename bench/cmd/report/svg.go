package main

// The plot is written as SVG by hand. A plotting library (gonum/plot and
// its font and image dependencies) would become a requirement of the
// cella module itself, listed in every user's go.sum, for one chart of a
// few polylines; a hundred lines of text output keeps the module's
// dependency set to what the allocator needs and renders the same in a
// browser and on GitHub.

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strconv"
	"strings"
)

// series is one implementation's line: ns/op at each goroutine count.
type series struct {
	impl   string
	points map[int]float64 // goroutines -> median ns/op
}

// implColors gives each implementation a fixed colour, cella the boldest.
var implColors = map[string]string{
	"cella":    "#d62728",
	"syncpool": "#1f77b4",
	"mutex":    "#2ca02c",
	"chan":     "#9467bd",
	"treiber":  "#ff7f0e",
	"heap":     "#7f7f7f",
}

var fallbackColors = []string{"#8c564b", "#e377c2", "#17becf", "#bcbd22"}

// plotSVG draws ns/op (log scale) against goroutines (log2 scale, the
// oversubscribed point marked) for every series.
func plotSVG(title string, ss []series, procs int) string {
	const (
		w, h                     = 760, 460
		left, right, top, bottom = 70, 150, 50, 60
	)
	pw, ph := float64(w-left-right), float64(h-top-bottom)

	var xs []int
	seen := map[int]bool{}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for g, v := range s.points {
			if !seen[g] {
				seen[g] = true
				xs = append(xs, g)
			}
			if v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	sort.Ints(xs)
	if len(xs) == 0 || math.IsInf(lo, 0) {
		return ""
	}
	// y: from the 1-2-5 step at or below the data to the one at or above.
	ylo, yhi := math.Log10(niceBelow(lo)), math.Log10(niceAbove(hi))
	if yhi <= ylo {
		yhi = ylo + 1
	}
	xlo, xhi := math.Log2(float64(xs[0])), math.Log2(float64(xs[len(xs)-1]))
	if xhi <= xlo {
		xhi = xlo + 1
	}
	px := func(g int) float64 { return left + pw*(math.Log2(float64(g))-xlo)/(xhi-xlo) }
	py := func(v float64) float64 { return top + ph*(1-(math.Log10(v)-ylo)/(yhi-ylo)) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))

	// Horizontal grid: 1, 2, 5 in every decade.
	for d := math.Floor(ylo); d <= yhi; d++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, d)
			if l := math.Log10(v); l < ylo-1e-9 || l > yhi+1e-9 {
				continue
			}
			y := py(v)
			stroke, dash := "#ccc", ` stroke-dasharray="3,3"`
			if m == 1 {
				stroke, dash = "#999", ""
			}
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"%s/>`+"\n", left, y, left+pw, y, stroke, dash)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, fmtNs(v))
		}
	}
	// Vertical ticks, one per measured goroutine count.
	for _, g := range xs {
		x := px(g)
		label := strconv.Itoa(g)
		if procs > 0 && g > procs {
			label += fmt.Sprintf(" (%dx)", g/procs)
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x, top, x, top+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, top+ph+18, label)
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">goroutines (GOMAXPROCS up to %d, then oversubscribed)</text>`+"\n", left+pw/2, h-16, procs)
	fmt.Fprintf(&b, `<text transform="translate(18,%.1f) rotate(-90)" text-anchor="middle">ns/op (log scale, lower is better)</text>`+"\n", top+ph/2)

	for i, s := range ss {
		color, ok := implColors[s.impl]
		if !ok {
			color = fallbackColors[i%len(fallbackColors)]
		}
		width := "2"
		if s.impl == "cella" {
			width = "3.5"
		}
		var pts []string
		for _, g := range xs {
			if v, ok := s.points[g]; ok && v > 0 {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(g), py(v)))
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="%s" points="%s"/>`+"\n", color, width, strings.Join(pts, " "))
		for _, p := range pts {
			x, y, _ := strings.Cut(p, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3.5" fill="%s"/>`+"\n", x, y, color)
		}
		ly := top + 10 + 20*i
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="%s"/>`+"\n", left+pw+14, ly, left+pw+38, ly, color, width)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", left+pw+44, ly+4, html.EscapeString(s.impl))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// fmtNs prints a tick value without trailing zeros.
func fmtNs(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + " ms"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + " µs"
	default:
		return strconv.FormatFloat(v, 'g', 3, 64) + " ns"
	}
}

// niceBelow is the largest 1, 2 or 5 times a power of ten not above v.
func niceBelow(v float64) float64 {
	d := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{5, 2, 1} {
		if m*d <= v {
			return m * d
		}
	}
	return d
}

// niceAbove is the smallest 1, 2 or 5 times a power of ten not below v.
func niceAbove(v float64) float64 {
	d := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*d >= v {
			return m * d
		}
	}
	return 10 * d
}
