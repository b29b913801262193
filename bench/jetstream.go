package bench

func jetstreamSection() (*Section, []*Contender) { return &Section{Name: SectionJetStream}, nil }
