// Command moat is the Moat IoT hub: the server and its command-line client.
package main

import (
	"os"

	"github.com/moat-iot/moat/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
