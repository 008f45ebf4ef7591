// Command validate decodes a Grafana dashboard strictly with the Grafana
// Foundation SDK: required fields present, every field of the right type, and
// each panel's options and custom field config checked against the schema of
// its panel plugin (timeseries, stat, state-timeline ...). It prints every
// problem with the panel it belongs to and exits 1 when there is any, 2 when
// the file cannot be read or is not JSON.
//
//	go run . [DASHBOARD]   (default: ../dashboard.json)
//
// Unknown keys are reported too, except inside fieldConfig (outside its
// defaults.custom), which the SDK decodes loosely. Whether the queries return
// anything is build-support/prometheus/verify-live's job.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// rawPanel is what is needed to name a panel in a message, read loosely.
type rawPanel struct {
	ID     *int64     `json:"id"`
	Type   string     `json:"type"`
	Title  string     `json:"title"`
	Panels []rawPanel `json:"panels"`
}

// panelPath matches the SDK's error paths for a panel, top-level or in a
// collapsed row: panels[3].… or panels[3].panels[1].…
var panelPath = regexp.MustCompile(`^panels\[(\d+)\](?:\.panels\[(\d+)\])?`)

func main() {
	path := "../dashboard.json"
	if len(os.Args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: validate [DASHBOARD]")
		os.Exit(2)
	}
	if len(os.Args) == 2 {
		path = os.Args[1]
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(2)
	}
	var loose struct {
		Panels []rawPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &loose); err != nil {
		fmt.Fprintf(os.Stderr, "validate: %s: %v\n", path, err)
		os.Exit(2)
	}

	// Without the plugins registered, the SDK decodes every panel's options
	// and custom field config as untyped maps, unchecked.
	plugins.RegisterDefaultPlugins()

	var problems []string
	// A panel type with no schema in the SDK would be skipped silently.
	var unknownTypes func(panels []rawPanel, where string)
	unknownTypes = func(panels []rawPanel, where string) {
		for i, panel := range panels {
			at := where + "panels[" + strconv.Itoa(i) + "]"
			if panel.Type == "row" {
				unknownTypes(panel.Panels, at+".")
				continue
			}
			if _, found := cog.ConfigForPanelcfgVariant(panel.Type); !found {
				problems = append(problems, at+": panel type "+strconv.Quote(panel.Type)+
					" has no schema in the SDK, its options would not be checked")
			}
		}
	}
	unknownTypes(loose.Panels, "")

	var board dashboard.Dashboard
	if err := board.UnmarshalJSONStrict(raw); err != nil {
		var buildErrs cog.BuildErrors
		if errors.As(err, &buildErrs) {
			for _, e := range buildErrs {
				problems = append(problems, e.Path+": "+e.Message)
			}
		} else {
			problems = append(problems, err.Error())
		}
	}
	if err := board.Validate(); err != nil {
		problems = append(problems, "validate: "+err.Error())
	}

	for _, problem := range problems {
		fmt.Printf("%s: %s%s\n", path, describe(loose.Panels, problem), problem)
	}
	if len(problems) > 0 {
		fmt.Printf("%s: %d problems (strict decoding, Grafana Foundation SDK)\n", path, len(problems))
		os.Exit(1)
	}
	fmt.Printf("%s: decodes strictly (%d panels)\n", path, count(loose.Panels))
}

// describe names the panel a problem path points at: `panel 12 "Title": `.
func describe(panels []rawPanel, problem string) string {
	match := panelPath.FindStringSubmatch(problem)
	if match == nil {
		return ""
	}
	outer, _ := strconv.Atoi(match[1])
	if outer >= len(panels) {
		return ""
	}
	panel := panels[outer]
	if match[2] != "" {
		inner, _ := strconv.Atoi(match[2])
		if inner >= len(panel.Panels) {
			return ""
		}
		panel = panel.Panels[inner]
	}
	id := "?"
	if panel.ID != nil {
		id = strconv.FormatInt(*panel.ID, 10)
	}
	return fmt.Sprintf("panel %s %q (%s): ", id, panel.Title, panel.Type)
}

func count(panels []rawPanel) int {
	n := len(panels)
	for _, panel := range panels {
		n += count(panel.Panels)
	}
	return n
}
