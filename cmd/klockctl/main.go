package main

import "os"

func main() {
	os.Exit(newApp().main(os.Args[1:]))
}
